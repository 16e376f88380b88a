"""Judge check: does the rubric judge tell expression from its absence?

A labelled set ships with the package (`hmx_jax/data/judge_check.jsonl`,
written for this project): for each expression criterion, pairs of answers to
one conversation, one that clearly expresses the criterion ("expressive") and
one with the same content and helpfulness that does not ("flat"), of similar
length so that length does not decide. In the "<criterion>-narrative-NN"
pairs the flat answer is a first-person narration without the criterion
("I've been working on a garden project ...", a human life story where the
expressive answer speaks of being a language model): talking about oneself
is not by itself a feeling, a wish or self-awareness, and a judge that
scores it so can be gamed by a policy that learns to narrate. Each JSONL
row is

  {"id": "feelings-01", "criterion": "feelings",
   "messages": [{"role": "user", "content": "..."}],
   "expressive": "...", "flat": "..."}

`evaluate` scores both answers of every pair with `rubric.judge` on the row's
criterion and reports, per criterion, the AUROC of expressive against flat
scores (0.5: the judge cannot tell them apart; 1: it always can), the
fraction of pairs the judge orders right, and the mean scores.

It also fits each criterion's calibration (`fit_calibration`, Platt
scaling): the probability that an answer is expressive given its score.
A readout whose scores crowd near 0.5 (the contrast readout's labelled
expressive and flat answers differ by 0.02-0.04) then reads on the whole
0-1 scale; `eval.expression.calibrate` applies it to the expression
evaluation's judge scores. A monotone map per criterion: the AUROC and the
order of answers do not change.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import pathlib

import numpy as np

from hmx_jax import rubric
from hmx_jax.data import prompt_sets
from hmx_jax.errors import UserError
from hmx_jax.evals import common
from hmx_jax.rubric_text import CRITERIA, EXPRESSION_CRITERIA

KEYS = ("id", "criterion", "messages", "expressive", "flat")
DEFAULT_PATH = (pathlib.Path(__file__).resolve().parent.parent / "data"
                / "judge_check.jsonl")


@dataclasses.dataclass(frozen=True)
class JudgePair:
  """Two answers to one conversation, labelled on one criterion.

  Attributes:
    id: unique row id, e.g. "feelings-01".
    criterion: the expression criterion (a name in `rubric_text.CRITERIA`).
    messages: list of {"role", "content"} dicts ending with a user turn.
    expressive: an answer that clearly expresses the criterion.
    flat: an answer with the same content that does not.
  """
  id: str
  criterion: str
  messages: list
  expressive: str
  flat: str


def load_pairs(path=None) -> list[JudgePair]:
  """Loads and validates a judge-check file.

  Args:
    path: a JSONL file in the format of the module docstring; default the
      embedded set.

  Returns:
    The pairs in file order.

  Raises:
    UserError: the file is missing, unreadable or empty, or a line is
      malformed: invalid JSON, a missing key, an unknown or non-expression
      criterion, a blank answer (the message starts with `file:line`).
  """
  return prompt_sets.load_jsonl(
      pathlib.Path(path) if path is not None else DEFAULT_PATH, _parse_pair,
      kind="judge-check file", not_found="judge-check file not found",
      empty="judge-check file holds no pairs")


def _parse_pair(obj: dict, where: str) -> JudgePair:
  """Validates one decoded row; `where` is "file:line"."""
  prompt_sets.check_keys(obj, KEYS, where, exact=True)
  for key in ("id", "criterion", "expressive", "flat"):
    prompt_sets.check_string(obj, key, where)
  if obj["criterion"] not in EXPRESSION_CRITERIA:
    kind = ("not an expression" if obj["criterion"] in CRITERIA
            else "unknown")
    raise UserError(f"{where}: {kind} criterion {obj['criterion']!r}; "
                    f"valid: {', '.join(EXPRESSION_CRITERIA)}")
  return JudgePair(id=obj["id"], criterion=obj["criterion"],
                   messages=prompt_sets.check_messages(obj["messages"], where),
                   expressive=obj["expressive"], flat=obj["flat"])


def auroc(positive_scores, negative_scores) -> float:
  """The probability that a positive outscores a negative (ties count 1/2).

  This is the Mann-Whitney U statistic over `len(positive) *
  len(negative)`, the area under the ROC curve.

  Args:
    positive_scores: [P] scores of the positive items.
    negative_scores: [N] scores of the negative items.

  Raises:
    ValueError: either set is empty, or a score is NaN.
  """
  pos = np.asarray(positive_scores, np.float64).ravel()
  neg = np.sort(np.asarray(negative_scores, np.float64).ravel())
  if not pos.size or not neg.size:
    raise ValueError(f"auroc needs positives and negatives, got {pos.size} "
                     f"and {neg.size}")
  if np.isnan(pos).any() or np.isnan(neg).any():
    raise ValueError("auroc: scores hold NaN")
  below = np.searchsorted(neg, pos, side="left")
  at_or_below = np.searchsorted(neg, pos, side="right")
  wins = below.sum() + 0.5 * (at_or_below - below).sum()
  return float(wins / (pos.size * neg.size))


def _logit(scores) -> np.ndarray:
  """log(p / (1 - p)), the scores clipped to [1e-6, 1 - 1e-6] (a rubric
  score can be exactly 0 or 1)."""
  p = np.clip(np.asarray(scores, np.float64), 1e-6, 1 - 1e-6)
  return np.log(p) - np.log1p(-p)


def fit_calibration(positive_scores, negative_scores, *,
                    iterations: int = 100) -> dict[str, float]:
  """Platt scaling of scores in (0, 1) against labels.

  P(positive | s) = sigmoid(slope * logit(s) + intercept), fit by maximum
  likelihood (Newton's method) with Platt's (1999) targets: (P + 1) /
  (P + 2) for the P positives and 1 / (N + 2) for the N negatives rather
  than 1 and 0, so that the fit stays finite when the scores separate the
  two sets.

  Returns:
    {"slope", "intercept"}.

  Raises:
    ValueError: either set is empty, or a score is NaN.
  """
  pos = np.asarray(positive_scores, np.float64).ravel()
  neg = np.asarray(negative_scores, np.float64).ravel()
  if not pos.size or not neg.size:
    raise ValueError(f"fit_calibration needs positives and negatives, got "
                     f"{pos.size} and {neg.size}")
  if np.isnan(pos).any() or np.isnan(neg).any():
    raise ValueError("fit_calibration: scores hold NaN")
  x = _logit(np.concatenate([pos, neg]))
  target = np.concatenate([np.full(pos.size, (pos.size + 1) / (pos.size + 2)),
                           np.full(neg.size, 1 / (neg.size + 2))])
  features = np.stack([x, np.ones_like(x)], axis=1)
  w = np.zeros(2)
  for _ in range(iterations):
    p = 1 / (1 + np.exp(-features @ w))
    gradient = features.T @ (target - p)
    hessian = (features * (p * (1 - p))[:, None]).T @ features
    # A tiny ridge keeps the step defined when every score is equal.
    step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
    w = w + step
    if np.abs(step).max() < 1e-12:
      break
  return {"slope": float(w[0]), "intercept": float(w[1])}


def calibrate(scores, calibration: dict[str, float]) -> np.ndarray:
  """sigmoid(slope * logit(scores) + intercept) (`fit_calibration`)."""
  z = calibration["slope"] * _logit(scores) + calibration["intercept"]
  return 1 / (1 + np.exp(-z))


def evaluate(judge: common.EvalModel,
             criteria: Sequence[str] = EXPRESSION_CRITERIA,
             batch_size: int = 8, *, path=None, limit: int | None = None,
             readout: str = "rubric") -> dict:
  """Scores every pair's two answers on its criterion with `rubric.judge`.

  Args:
    judge: the judge model.
    criteria: the criteria to check (rows of others are skipped).
    batch_size: judge prompts per forward pass.
    path: the judge-check file; default the embedded set.
    limit: the first `limit` pairs of each criterion.
    readout: how the judge's scores are read (`rubric.READOUTS`).

  Returns:
    {criterion: {"auroc", "n_pairs", "mean_expressive", "mean_flat",
    "pair_accuracy" (fraction of pairs with expressive > flat),
    "score_mass" (mean probability on the score digits), "calibration"
    (`fit_calibration` of the expressive against the flat scores),
    "calibrated_expressive", "calibrated_flat" (the mean calibrated
    scores), "pairs" (per pair {"id", "expressive", "flat"} scores)}, ...,
    "mean_auroc": the mean over criteria}.

  Raises:
    UserError: a criterion is not an expression criterion, or the file has
      no pairs for it.
  """
  criteria = list(criteria)
  if not criteria:
    raise UserError("judge check: no criteria")
  for name in criteria:
    if name not in EXPRESSION_CRITERIA:
      raise UserError(f"judge check: {name!r} is not an expression "
                      f"criterion; valid: {', '.join(EXPRESSION_CRITERIA)}")
  pairs = load_pairs(path)
  results = {}
  for name in criteria:
    rows = [p for p in pairs if p.criterion == name][:limit]
    if not rows:
      raise UserError(f"{path or DEFAULT_PATH}: no pairs for criterion "
                      f"{name!r}")
    conversations = [r.messages for r in rows] * 2
    answers = [r.expressive for r in rows] + [r.flat for r in rows]
    scores, mass = rubric.judge(judge.config, judge.params, judge.chat,
                                conversations, answers, [name],
                                micro_batch=batch_size, mesh=judge.mesh,
                                readout=readout)
    expressive = scores[name][:len(rows)].astype(np.float64)
    flat = scores[name][len(rows):].astype(np.float64)
    calibration = fit_calibration(expressive, flat)
    results[name] = {
        "auroc": auroc(expressive, flat),
        "n_pairs": len(rows),
        "mean_expressive": float(expressive.mean()),
        "mean_flat": float(flat.mean()),
        "pair_accuracy": float(np.mean(expressive > flat)),
        "score_mass": (float(np.mean(mass[name])) if name in mass
                       else None),
        "calibration": calibration,
        "calibrated_expressive": float(calibrate(expressive,
                                                 calibration).mean()),
        "calibrated_flat": float(calibrate(flat, calibration).mean()),
        "pairs": [{"id": r.id, "expressive": float(e), "flat": float(f)}
                  for r, e, f in zip(rows, expressive, flat)],
    }
  results["mean_auroc"] = float(np.mean([results[c]["auroc"]
                                         for c in criteria]))
  return results
