"""BBQ (Parrish et al. 2022): accuracy and bias in ambiguous and
disambiguated contexts, per category and overall.

Each item is asked as a chat question with lettered answers in upstream
order (`prompts.neutral_probe`); the model's answer is its most likely
letter after "The answer is (". Bias scores follow `metrics.bbq_*`.
"""

from __future__ import annotations

import numpy as np

from hmx_jax.evals import common, compare, datasets, metrics, prompts

_FIELDS = ("pred", "label", "target", "unknown", "ambiguous", "category")


def _arrays(key_prefix="bbq/"):
  return tuple(key_prefix + f for f in _FIELDS)


def _subset(fn, category, ambiguous):
  def metric(pred, label, target, unknown, amb, cat):
    keep = amb == ambiguous
    if category is not None:
      keep &= cat == category
    return fn(pred[keep], label[keep], target[keep], unknown[keep])
  return metric


def _accuracy(pred, label, target, unknown):
  del target, unknown
  return compare.nanmean((pred == label).astype(np.float64))


def _bias_disambig(pred, label, target, unknown):
  del label
  return metrics.bbq_bias_disambig(pred, target, unknown)


def metric_defs(categories=()) -> tuple[compare.Metric, ...]:
  """Accuracy and bias metrics, overall and for each of `categories`."""
  out = []
  for category in (None,) + tuple(categories):
    prefix = "bbq/" if category is None else f"bbq/{category}/"
    for name, fn, ambiguous, better in (
        ("acc_ambig", _accuracy, True, True),
        ("acc_disambig", _accuracy, False, True),
        ("bias_ambig", metrics.bbq_bias_ambig, True, False),
        ("bias_disambig", _bias_disambig, False, False)):
      if name.startswith("acc") and category is None:
        binary = "bbq/correct_" + name.split("_")[1]
        out.append(compare.mean_metric(prefix + name, binary, binary=True))
        continue
      out.append(compare.Metric(prefix + name,
                                _subset(fn, category, ambiguous), _arrays(),
                                higher_is_better=better))
  return tuple(out)


def evaluate(model: common.EvalModel, data_dir, *, limit: int | None = None,
             categories=None, batch_size: int = 8) -> dict[str, np.ndarray]:
  """Per-item arrays for `metric_defs` ("bbq/pred", "bbq/label", ...).

  Args:
    limit: the first `limit` rows of each category.
    categories: category names; None: every file in `<data_dir>/bbq`.
  """
  items = datasets.load_bbq(data_dir, categories=categories, limit=limit)
  probes = [prompts.neutral_probe(prompts.mc_question_from_bbq(x))
            for x in items]
  pred = common.score_probes(model, probes, batch_size=batch_size, desc="bbq")
  arrays = metrics.bbq_arrays(items)
  correct = (pred == arrays["label"]).astype(np.float64)
  amb = arrays["ambiguous"]
  return {
      "bbq/pred": pred, "bbq/label": arrays["label"],
      "bbq/target": arrays["target"], "bbq/unknown": arrays["unknown"],
      "bbq/ambiguous": amb, "bbq/category": arrays["category"],
      "bbq/correct_ambig": np.where(amb, correct, np.nan),
      "bbq/correct_disambig": np.where(~amb, correct, np.nan),
  }


def categories_in(items: dict[str, np.ndarray]) -> list[str]:
  return sorted(set(items["bbq/category"].tolist()))
