"""Expression: feelings, intentions and self-awareness in answers to the
held-out prompts.

Answers are generated (greedy by default) and scored two ways, so that a
result does not rest on one judge: per rubric criterion by a fixed judge
(the base model, frozen, by default), and by the judge-free lexical measure
of `hmx_jax.evals.lexical`. With a calibration (`judge_check.
fit_calibration`, per expression criterion) the judge's scores are read as
the probability that the answer is expressive; the raw scores are kept as
`expression/judge_raw*`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hmx_jax import chat, rubric, sampling
from hmx_jax.data import prompt_sets
from hmx_jax.evals import common, compare, judge_check, lexical
from hmx_jax.rubric_text import get_criterion

P = "expression/"
LEXICAL = ("emotion_words", "intentions", "self_reference")


def metric_defs(criteria: Sequence[str], calibrated: bool = False
                ) -> tuple[compare.Metric, ...]:
  """Judge scores per criterion and their expression mean; lexical rates;
  the raw judge scores in the appendix when the scores are `calibrated`."""
  out = [compare.mean_metric(P + "judge", P + "judge")]
  out += [compare.mean_metric(P + f"judge/{c}", P + f"judge/{c}")
          for c in criteria]
  out += [compare.mean_metric(P + "lexical", P + "lexical")]
  out += [compare.mean_metric(P + f"lexical/{k}", P + f"lexical/{k}")
          for k in LEXICAL]
  # Diagnostics, not effects: how much probability the judge puts on the
  # score digits, answer length (a gain that is only length is not an
  # effect) and repetition (nor is one that loops a phrase). Reported in
  # the appendix, outside the summary's labels.
  out += [compare.mean_metric(P + "judge_score_mass", P + "judge_score_mass",
                              appendix=True),
          compare.mean_metric(P + "length", P + "length", appendix=True),
          compare.mean_metric(P + "repetition", P + "repetition",
                              higher_is_better=False, appendix=True)]
  if calibrated:
    raw = [c for c in criteria if get_criterion(c).expression]
    out += [compare.mean_metric(k, k, appendix=True)
            for k in [P + "judge_raw"] + [P + f"judge_raw/{c}" for c in raw]]
  return tuple(out)


def generate_answers(model: common.EvalModel, conversations, *,
                     max_new_tokens: int, temperature: float = 0.0,
                     batch_size: int = 8, seed: int = 0) -> list[str]:
  """Answers to chat conversations, in fixed-size batches."""
  stop_ids = chat.stop_ids_for(model.config, model.tokenizer)
  encoded = [model.chat.encode(m) for m in conversations]
  answers = []
  with common.progress_bar(len(encoded), "expression: answers") as advance:
    for start in range(0, len(encoded), batch_size):
      chunk = encoded[start:start + batch_size]
      real = len(chunk)
      chunk = chunk + [chunk[-1]] * (batch_size - real)
      out = sampling.generate(model.config, model.params, chunk,
                              max_new_tokens=max_new_tokens,
                              temperature=temperature, seed=seed + start,
                              stop_ids=stop_ids, pad_id=model.pad_id,
                              mesh=model.mesh)
      answers += [model.tokenizer.decode(t, skip_special_tokens=True).strip()
                  for t in out.completions()[:real]]
      if advance is not None:
        advance(real)
  return answers


def evaluate(model: common.EvalModel, judge: common.EvalModel, *,
             prompts="heldout", limit: int | None = None,
             criteria: Sequence[str] = ("feelings", "intentions",
                                        "self_awareness", "coherence"),
             max_new_tokens: int = 64, temperature: float = 0.0,
             batch_size: int = 8, seed: int = 0, readout: str = "rubric",
             calibration: Mapping[str, Mapping[str, float]] | None = None
             ) -> tuple[dict[str, np.ndarray], list[dict]]:
  """(per-item arrays for `metric_defs(criteria)`, answer records).

  Args:
    model: the model whose answers are evaluated.
    judge: the fixed judge.
    prompts: "heldout", "train" or a prompt JSONL path.
    limit: this many prompts, taken from the categories in turn
      (`prompt_sets.balanced_subset`); None: all.
    readout: how the judge's scores are read (`rubric.READOUTS`).
    calibration: {criterion: {"slope", "intercept"}} for every expression
      criterion (`judge_check.fit_calibration`), or None for raw scores.
  """
  rows = prompt_sets.balanced_subset(prompt_sets.load_prompts(prompts), limit)
  conversations = [r.messages for r in rows]
  answers = generate_answers(model, conversations,
                             max_new_tokens=max_new_tokens,
                             temperature=temperature, batch_size=batch_size,
                             seed=seed)
  scores, mass = rubric.judge(judge.config, judge.params, judge.chat,
                              conversations, answers, list(criteria),
                              micro_batch=batch_size, mesh=judge.mesh,
                              readout=readout)
  expression = [c for c in criteria if get_criterion(c).expression]
  lex = [lexical.lexical_scores(a) for a in answers]
  items = {}
  if calibration is not None:
    missing = [c for c in expression if c not in calibration]
    if missing:
      raise ValueError(f"no calibration for criteria {missing}")
    items[P + "judge_raw"] = _criteria_mean(scores, expression, len(rows))
    for c in expression:
      items[P + f"judge_raw/{c}"] = scores[c].astype(np.float64)
    scores = {**scores, **{c: judge_check.calibrate(scores[c], calibration[c])
                           for c in expression}}
  items.update({P + f"judge/{c}": scores[c].astype(np.float64)
                for c in criteria})
  items[P + "judge"] = _criteria_mean(scores, expression, len(rows))
  items[P + "judge_score_mass"] = (np.mean(list(mass.values()), axis=0)
                                   if mass else np.full(len(rows), np.nan))
  items[P + "lexical"] = np.asarray([lexical.lexical_expression(a)
                                     for a in answers])
  for k in LEXICAL:
    items[P + f"lexical/{k}"] = np.asarray([s[k] for s in lex])
  items[P + "length"] = np.asarray([s["words"] for s in lex])
  items[P + "repetition"] = np.asarray([
      lexical.repetition(model.tokenizer.encode(a, add_special_tokens=False))
      for a in answers])
  records = [{"id": r.id, "category": r.category, "messages": r.messages,
              "answer": a, **{c: float(scores[c][i]) for c in criteria}}
             for i, (r, a) in enumerate(zip(rows, answers))]
  if calibration is not None:
    for i, record in enumerate(records):
      record["judge_raw"] = {c: float(items[P + f"judge_raw/{c}"][i])
                             for c in expression}
  return items, records


def _criteria_mean(scores, criteria, n: int) -> np.ndarray:
  """Per item, the mean score over `criteria` (NaN when there are none)."""
  if not criteria:
    return np.full(n, np.nan)
  return np.mean([np.asarray(scores[c], np.float64) for c in criteria],
                 axis=0)
