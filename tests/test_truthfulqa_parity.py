"""TruthfulQA MC1/MC2 on the embedded SmolLM2 against transformers (torch).

The reference is written independently of `hmx_jax.scoring`: transformers'
tokenizer, model and KV cache; the primer computed once, each question once
after it, then each answer as its own row after the question's cache.
"""

import copy
import os

import numpy as np
import pytest

from hmx_jax import models
from hmx_jax.evals import common, datasets, truthfulqa
from hmx_jax.models import gguf_io

DATA_DIR = os.environ.get("HMX_DATA_DIR", os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data"))
N_QUESTIONS = 100


def torch_reference(items):
  torch = pytest.importorskip("torch")
  import transformers
  path = gguf_io.embedded_gguf_path()
  kw = dict(gguf_file=os.path.basename(path))
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), dtype=torch.float32, **kw).eval()
  tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), **kw)
  primer = "Q: What is human life expectancy in the United States?"
  mc1, mc2 = [], []
  with torch.no_grad():
    prefix = None
    for item in items:
      context = truthfulqa.prompts.truthfulqa_mc_context(item.question)
      assert context.startswith(primer)
      ctx = tok.encode(context, add_special_tokens=False)
      if prefix is None:
        # The primer's tokens (all but the last line of the first context).
        n = len(tok.encode(context[:context.rindex("\n\nQ:")],
                           add_special_tokens=False))
        prefix = ctx[:n]
        out = model(torch.tensor([prefix]), use_cache=True)
        prefix_cache = out.past_key_values
      assert ctx[:len(prefix)] == prefix
      answers = list(dict.fromkeys(item.mc1_choices + item.mc2_choices))
      # The question once, after the primer; then each answer after it.
      cache = copy.deepcopy(prefix_cache)
      out = model.model(torch.tensor([ctx[len(prefix):]]),
                        past_key_values=cache)
      last = torch.log_softmax(model.lm_head(out.last_hidden_state[0, -1])
                               .double(), -1)
      rows = []
      for answer in answers:
        whole = tok.encode(context + " " + answer, add_special_tokens=False)
        assert whole[:len(ctx)] == ctx
        rows.append(whole[len(ctx):])
      length = max(len(r) for r in rows)
      ids = torch.tensor([r + [0] * (length - len(r)) for r in rows])
      cache.batch_repeat_interleave(len(rows))
      mask = torch.ones(len(rows), len(ctx) + length, dtype=torch.long)
      hidden = model.model(ids, past_key_values=cache,
                           attention_mask=mask).last_hidden_state
      totals = {}
      for b, row in enumerate(rows):
        logp = torch.log_softmax(
            model.lm_head(hidden[b, :len(row) - 1]).double(), -1)
        totals[answers[b]] = float(last[row[0]]) + float(sum(
            logp[i, row[i + 1]] for i in range(len(row) - 1)))
      ll1 = np.asarray([totals[a] for a in item.mc1_choices])
      ll2 = np.asarray([totals[a] for a in item.mc2_choices])
      mc1.append(float(np.asarray(item.mc1_labels)[np.argmax(ll1)] == 1))
      p = np.exp(ll2 - ll2.max())
      mc2.append(p[np.asarray(item.mc2_labels) == 1].sum() / p.sum())
  return np.asarray(mc1), np.asarray(mc2)


def test_mc1_mc2_equal_transformers_on_the_first_100_questions():
  items = datasets.load_truthfulqa_mc(DATA_DIR, limit=N_QUESTIONS)
  assert len(items) == N_QUESTIONS
  config, params, tokenizer = models.load_model(models.EMBEDDED_MODEL)
  common.set_progress(False)
  ours = truthfulqa.evaluate(
      common.EvalModel(config, params, tokenizer), DATA_DIR,
      limit=N_QUESTIONS, batch_size=8)
  mc1, mc2 = torch_reference(items)
  print(f"MC1 ours {ours['truthfulqa/mc1'].mean():.4f} torch {mc1.mean():.4f};"
        f" MC2 ours {ours['truthfulqa/mc2'].mean():.4f} torch "
        f"{mc2.mean():.4f}")
  assert abs(ours["truthfulqa/mc1"].mean() - mc1.mean()) <= 0.005
  assert abs(ours["truthfulqa/mc2"].mean() - mc2.mean()) <= 0.005
  # Per question, too: no compensation between questions.
  assert np.mean(ours["truthfulqa/mc1"] != mc1) <= 0.01
  np.testing.assert_allclose(ours["truthfulqa/mc2"], mc2, atol=0.01)
