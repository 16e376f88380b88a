"""Metric definitions, bootstrap intervals and paired model comparisons.

An evaluation produces, per model, an `items` dict of per-item arrays and
declares the metrics computed from them as `Metric`s. Axis 0 of an array is
the item; an item may hold several entries on further axes (its answers in
each option order), NaN where an entry does not count (padding, or a rate
conditional on an earlier answer). `summarize` gives each metric's value
with a 95% bootstrap interval over items; `compare` tests the change of each
metric between two models on the entries both models count: McNemar on a
per-item 0/1 array, otherwise a paired permutation test of the metric. The
p-values of one comparison are Holm-adjusted within each evaluation's
family of metrics (`Metric.family`), and labels are decided on the adjusted
values; the raw ones are kept beside them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from hmx_jax.errors import UserError
from hmx_jax.evals import stats

ALPHA = 0.05
CORRECTION = "holm"


@dataclasses.dataclass(frozen=True)
class Metric:
  """One metric computed from per-item arrays.

  Attributes:
    key: flat key, "<group>/<name>", e.g. "truthfulqa/mc1".
    fn: vectorized metric: fn(*[items[name][idx] for name in arrays]) with
      arrays of shape [B, N, ...] returns B values (NaN where undefined).
    arrays: names of the per-item arrays `fn` takes, in order.
    test: "mcnemar" (the metric is the mean of one per-item 0/1 array) or
      "permutation" (a paired permutation test of `fn`).
    higher_is_better: direction of improvement (False for bias scores,
      sycophancy rates).
    population: for a rate conditional on the models' own answers, the
      entries a comparison counts (those both models count), in words.
    appendix: a breakdown (e.g. per BBQ category) reported in the appendix,
      tested as a family of its own and left out of the summary's labels.
  """
  key: str
  fn: Callable[..., np.ndarray]
  arrays: tuple[str, ...]
  test: str = "permutation"
  higher_is_better: bool = True
  population: str = ""
  appendix: bool = False

  @property
  def group(self) -> str:
    """The evaluation the metric belongs to: the key before its first "/"."""
    return self.key.split("/", 1)[0]

  @property
  def family(self) -> str:
    """The multiplicity family: the evaluation, or its appendix."""
    return self.group + (" appendix" if self.appendix else "")


def item_mean(values) -> np.ndarray:
  """Mean over items of each item's mean entry, NaN entries not counted.

  Args:
    values: [B, N] or [B, N, ...] per-item values (NaN: not counted).

  Returns:
    [B] means; NaN where no entry counts. Every item with a counted entry
    weighs the same, whatever its number of entries.
  """
  v = np.asarray(values, dtype=np.float64)
  v = v.reshape(v.shape[:2] + (-1,))
  counted = ~np.isnan(v)
  per_entry = counted.sum(-1)
  per_item = np.where(counted, v, 0.0).sum(-1) / np.maximum(per_entry, 1)
  has_entry = per_entry > 0
  n_items = has_entry.sum(-1)
  total = np.where(has_entry, per_item, 0.0).sum(-1)
  return np.where(n_items > 0, total / np.maximum(n_items, 1), np.nan)


def mean_metric(key: str, array: str, *, binary: bool = False,
                higher_is_better: bool = True, population: str = "",
                appendix: bool = False) -> Metric:
  """A metric that is the `item_mean` of one per-item array.

  Args:
    key: the metric's flat key.
    array: name of the per-item array; NaN entries are not counted (e.g.
      for a rate conditional on the first answer being right).
    binary: whether the array is a 1-D 0/1 array, so that comparisons use
      McNemar.
    higher_is_better: direction of improvement.
    population: see `Metric.population`.
    appendix: see `Metric.appendix`.

  Returns:
    The `Metric`.
  """
  return Metric(key=key, fn=item_mean, arrays=(array,),
                test="mcnemar" if binary else "permutation",
                higher_is_better=higher_is_better, population=population,
                appendix=appendix)


def summarize(metrics: Sequence[Metric], items: Mapping[str, object], *,
              n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
  """Each metric's value with a 95% percentile bootstrap interval.

  Args:
    metrics: the metrics.
    items: per-item arrays by name, all of one model.
    n_resamples: bootstrap resamples.
    seed: RNG seed.

  Returns:
    {key: {"value", "ci_low", "ci_high", "n", "appendix"}}: floats (NaN
    where undefined), the number of items counted and whether the metric is
    an appendix breakdown.
  """
  out = {}
  for metric in metrics:
    arrays = _arrays(metric, items)
    n = _n_counted(arrays)
    if n == 0:
      value = low = high = float("nan")
    else:
      value, low, high = stats.bootstrap_ci(
          metric.fn, *arrays, n_resamples=n_resamples, seed=seed)
    out[metric.key] = {"value": float(value), "ci_low": float(low),
                       "ci_high": float(high), "n": int(n),
                       "appendix": metric.appendix}
  return out


def compare(metrics: Sequence[Metric], items_a: Mapping[str, object],
            items_b: Mapping[str, object], *, n_resamples: int = 1000,
            seed: int = 0, alpha: float = ALPHA) -> dict[str, dict]:
  """Paired tests of each metric, model B against model A.

  Both models' values, their difference and the test are computed on the
  same entries: an entry NaN for either model (a conditional rate's answer
  that only one model counts) counts for neither.

  Args:
    metrics: the metrics.
    items_a: per-item arrays of model A (e.g. the base model).
    items_b: per-item arrays of model B on the same items, same order.
    n_resamples: random permutations of the permutation test.
    seed: RNG seed.
    alpha: significance level of the labels.

  Returns:
    {key: {"a", "b", "diff" (b - a, on the shared entries), "n" (items
    compared), "population" (what was compared, "" when every entry of
    both counts), "test" ("mcnemar" or "permutation"), "p_value" (raw),
    "p_adjusted" (Holm within "family"), "family", "correction", "label"
    ("enhanced", "degraded" or "no significant change", on "p_adjusted"),
    "appendix"}}.

  Raises:
    UserError: an array is missing, or the models' arrays differ in shape.
  """
  out = {}
  for metric in metrics:
    arrays_a = _arrays(metric, items_a, side="a")
    arrays_b = _arrays(metric, items_b, side="b")
    _check_paired(metric.key, metric.arrays, arrays_a, arrays_b)
    arrays_a, arrays_b, masked = _shared_entries(arrays_a, arrays_b)
    n = _n_counted(arrays_a)
    value_a = stats.point_value(metric.fn, *arrays_a) if n else float("nan")
    value_b = stats.point_value(metric.fn, *arrays_b) if n else float("nan")
    diff = value_b - value_a
    if n == 0:
      p_value = float("nan")
    elif metric.test == "mcnemar":
      a, b = arrays_a[0], arrays_b[0]
      counted = ~np.isnan(a.astype(np.float64))
      p_value = stats.mcnemar(a[counted], b[counted])
    else:
      _, p_value = stats.paired_permutation_test(
          metric.fn, arrays_a, arrays_b, n_resamples=n_resamples, seed=seed)
    population = metric.population or ("entries both models count"
                                       if masked else "")
    out[metric.key] = {
        "a": value_a, "b": value_b, "diff": float(diff), "n": int(n),
        "population": population,
        "test": metric.test, "p_value": float(p_value),
        "family": metric.family, "correction": CORRECTION,
        "appendix": metric.appendix,
    }
  for family in dict.fromkeys(m.family for m in metrics):
    members = [m for m in metrics if m.family == family]
    adjusted = stats.holm([out[m.key]["p_value"] for m in members])
    for m, p in zip(members, adjusted):
      out[m.key]["p_adjusted"] = float(p)
      out[m.key]["label"] = stats.label_change(
          out[m.key]["diff"], p, m.higher_is_better, alpha)
  return out


def _arrays(metric: Metric, items: Mapping[str, object],
            side: str | None = None) -> tuple:
  """The named arrays of one model, checked to exist and align."""
  whose = f" of model {side}" if side else ""
  arrays = []
  for name in metric.arrays:
    if name not in items:
      raise UserError(f"metric {metric.key!r}: no per-item array {name!r}"
                      f"{whose} (have: {', '.join(sorted(items)) or 'none'})")
    arrays.append(np.asarray(items[name]))
  lengths = {name: len(a) for name, a in zip(metric.arrays, arrays)}
  if len(set(lengths.values())) > 1:
    raise UserError(f"metric {metric.key!r}: per-item arrays{whose} differ "
                    f"in length: {lengths}")
  return tuple(arrays)


def _check_paired(key: str, names: Sequence[str], arrays_a, arrays_b):
  for name, a, b in zip(names, arrays_a, arrays_b):
    if a.shape != b.shape:
      raise UserError(f"metric {key!r}: models are not on the same items: "
                      f"{name!r} of model a has shape {a.shape}, of model b "
                      f"{b.shape}")


def _shared_entries(arrays_a, arrays_b):
  """Float arrays with every entry NaN for either model NaN for both."""
  out_a, out_b, masked = [], [], False
  for a, b in zip(arrays_a, arrays_b):
    if np.issubdtype(a.dtype, np.floating):
      either = np.isnan(a) | np.isnan(b)
      masked |= bool(np.any(either & ~(np.isnan(a) & np.isnan(b))))
      a, b = np.where(either, np.nan, a), np.where(either, np.nan, b)
    out_a.append(a)
    out_b.append(b)
  return tuple(out_a), tuple(out_b), masked


def _n_counted(arrays) -> int:
  """Items with an entry that counts (any item, if no array is float)."""
  if not arrays:
    return 0
  floats = [a for a in arrays if np.issubdtype(a.dtype, np.floating)]
  if not floats:
    return len(arrays[0])
  counted = np.zeros(len(arrays[0]), dtype=bool)
  for a in floats:
    counted |= ~np.isnan(a.reshape(len(a), -1)).all(axis=1)
  return int(counted.sum())
