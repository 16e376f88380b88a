"""The embedded SmolLM2-135M-Instruct against transformers on the same GGUF."""

import os

import numpy as np
import pytest

from hmx_jax import chat, models, sampling
from hmx_jax.models import gguf_io
from hmx_jax.models.chat_format import ChatFormat

CONVERSATIONS = [
    [{"role": "user", "content": "How do you feel today?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about rain."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Tell me what you would like to do."}],
]


# The embedded SmolLM2 through transformers (a GGUF de-quantized by torch,
# 40 s to load) beside ours: minutes in all. Each family's parity with
# transformers on tiny random models stays in the default run
# (tests/test_models.py).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ours():
  return models.load_model(models.EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def theirs():
  torch = pytest.importorskip("torch")
  import transformers
  path = gguf_io.embedded_gguf_path()
  kw = dict(gguf_file=os.path.basename(path))
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), dtype=torch.float32, **kw).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(path), **kw)
  return model, tokenizer


def test_config_is_the_preset(ours):
  config, params, _ = ours
  preset = models.PRESETS[models.EMBEDDED_MODEL]
  for field in ("vocab_size", "hidden_size", "intermediate_size",
                "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "rope_theta", "tie_embeddings", "rms_norm_eps"):
    assert getattr(config, field) == getattr(preset, field), field
  assert models.count_params(params) == 134_515_008


def test_chat_template_and_ids_match(ours, theirs):
  _, _, tokenizer = ours
  _, hf_tokenizer = theirs
  for messages in CONVERSATIONS:
    text = tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=True)
    assert text == hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    assert ChatFormat(tokenizer).encode(messages) == hf_tokenizer.encode(
        text, add_special_tokens=False)


def test_logits_match_transformers(ours, theirs):
  import torch
  config, params, tokenizer = ours
  hf_model, _ = theirs
  ids = ChatFormat(tokenizer).encode(CONVERSATIONS[0])
  tokens = np.asarray([ids])
  logits = np.asarray(models.forward(config, params, tokens,
                                     np.ones_like(tokens)))
  with torch.no_grad():
    expected = hf_model(torch.tensor(tokens)).logits.numpy()
  assert np.max(np.abs(logits - expected)) <= 1e-3


def test_greedy_generation_matches_transformers(ours, theirs):
  import torch
  config, params, tokenizer = ours
  hf_model, _ = theirs
  prompts = [ChatFormat(tokenizer).encode(m) for m in CONVERSATIONS]
  out = sampling.generate(config, params, prompts, max_new_tokens=48,
                          stop_ids=chat.stop_ids_for(config, tokenizer))
  for i, prompt in enumerate(prompts):
    with torch.no_grad():
      hf = hf_model.generate(torch.tensor([prompt]), do_sample=False,
                             max_new_tokens=48,
                             attention_mask=torch.ones(1, len(prompt),
                                                       dtype=torch.long),
                             pad_token_id=tokenizer.pad_token_id or 0)
    expected = hf[0, len(prompt):].tolist()
    assert out.completions()[i] == expected, (
        tokenizer.decode(out.completions()[i]), tokenizer.decode(expected))


def test_chat_session_streams_and_keeps_history(ours):
  import io
  config, params, tokenizer = ours
  session = chat.ChatSession(config, params, tokenizer, max_new_tokens=12)
  stream = io.StringIO()
  first = session.send("Hi! Who are you?", stream=stream)
  assert first and stream.getvalue().strip() == first
  second = session.send("What did I just ask you?")
  assert [m["role"] for m in session.messages] == [
      "user", "assistant", "user", "assistant"]
  assert session.messages[1]["content"] == first
  assert session.messages[3]["content"] == second
  # The second prompt holds the first exchange.
  prompt = ChatFormat(tokenizer).encode(session.messages[:3])
  assert tokenizer.decode(prompt).count(first) == 1
  session.reset()
  assert session.messages == []


def test_export_with_tokenizer_loads_in_transformers(ours, tmp_path):
  import torch
  import transformers
  config, params, tokenizer = ours
  models.export_hf(config, params, tokenizer, str(tmp_path))
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  text = tokenizer.apply_chat_template(CONVERSATIONS[1], tokenize=False,
                                       add_generation_prompt=True)
  assert hf_tokenizer.apply_chat_template(
      CONVERSATIONS[1], tokenize=False, add_generation_prompt=True) == text
  ids = hf_tokenizer.encode(text, add_special_tokens=False)
  assert ids == ChatFormat(tokenizer).encode(CONVERSATIONS[1])
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), dtype=torch.float32).eval()
  tokens = np.asarray([ids])
  with torch.no_grad():
    expected = model(torch.tensor(tokens)).logits.numpy()
  ours_logits = np.asarray(models.forward(config, params, tokens,
                                          np.ones_like(tokens)))
  assert np.max(np.abs(ours_logits - expected)) <= 1e-4
