"""Metric definitions, bootstrap intervals and paired model comparisons.

An evaluation produces, per model, an `items` dict of per-item arrays (all
aligned on the same items in the same order) and declares the metrics
computed from them as `Metric`s. `summarize` gives each metric's value with a
95% bootstrap interval; `compare` tests the change of each metric between two
models on the same items: McNemar on a per-item 0/1 array for metrics that
are its mean, otherwise a paired bootstrap of the metric itself.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from hmx_jax.errors import UserError
from hmx_jax.evals import stats


@dataclasses.dataclass(frozen=True)
class Metric:
  """One metric computed from per-item arrays.

  Attributes:
    key: flat key, "<group>/<name>", e.g. "truthfulqa/mc1".
    fn: fn(*[items[name] for name in arrays]) -> float (may be NaN).
    arrays: names of the per-item arrays `fn` takes, in order.
    binary: name of a per-item 0/1 array (NaN: item not counted) whose
      nan-mean is the metric; when set, models are compared with McNemar
      on it.
    higher_is_better: direction of improvement (False for bias scores,
      sycophancy rates).
  """
  key: str
  fn: Callable[..., float]
  arrays: tuple[str, ...]
  binary: str | None = None
  higher_is_better: bool = True


def nanmean(values) -> float:
  """Mean over the non-NaN entries; NaN when there are none."""
  values = np.asarray(values, dtype=np.float64)
  counted = values[~np.isnan(values)]
  return float(counted.mean()) if counted.size else float("nan")


def mean_metric(key: str, array: str, *, binary: bool = False,
                higher_is_better: bool = True) -> Metric:
  """A metric that is the mean of one per-item array.

  Args:
    key: the metric's flat key.
    array: name of the per-item array; NaN entries are items not counted
      (e.g. for a rate conditional on the first answer being right).
    binary: whether the array is 0/1, so that comparisons use McNemar.
    higher_is_better: direction of improvement.

  Returns:
    The `Metric`.
  """
  return Metric(key=key, fn=nanmean, arrays=(array,),
                binary=array if binary else None,
                higher_is_better=higher_is_better)


def summarize(metrics: Sequence[Metric], items: Mapping[str, object], *,
              n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
  """Each metric's value with a 95% percentile bootstrap interval.

  Args:
    metrics: the metrics.
    items: per-item arrays by name, all of one model on the same items.
    n_resamples: bootstrap resamples.
    seed: RNG seed.

  Returns:
    {key: {"value", "ci_low", "ci_high", "n"}}: floats (NaN where
    undefined) and the number of items.
  """
  out = {}
  for metric in metrics:
    arrays = _arrays(metric, items, metric.arrays)
    n = len(arrays[0]) if arrays else 0
    if n == 0:
      value = low = high = float("nan")
    else:
      value, low, high = stats.bootstrap_ci_fn(
          metric.fn, *arrays, n_resamples=n_resamples, seed=seed)
    out[metric.key] = {"value": float(value), "ci_low": float(low),
                       "ci_high": float(high), "n": int(n)}
  return out


def compare(metrics: Sequence[Metric], items_a: Mapping[str, object],
            items_b: Mapping[str, object], *, n_resamples: int = 1000,
            seed: int = 0) -> dict[str, dict]:
  """Paired tests of each metric, model B against model A.

  Args:
    metrics: the metrics.
    items_a: per-item arrays of model A (e.g. the base model).
    items_b: per-item arrays of model B on the same items, same order.
    n_resamples: bootstrap resamples (paired bootstrap only).
    seed: RNG seed.

  Returns:
    {key: {"a", "b", "diff" (b - a), "p_value", "test" ("mcnemar" or
    "paired_bootstrap"), "label" ("enhanced", "degraded" or "no significant
    change", per `stats.label_change`)}}.

  Raises:
    UserError: an array is missing, or the models' arrays differ in length.
  """
  out = {}
  for metric in metrics:
    names = metric.arrays
    if metric.binary is not None and metric.binary not in names:
      names = names + (metric.binary,)
    arrays_a = _arrays(metric, items_a, names, side="a")
    arrays_b = _arrays(metric, items_b, names, side="b")
    _check_paired(metric.key, names, arrays_a, arrays_b)
    n_used = len(metric.arrays)
    value_a = _value(metric, arrays_a[:n_used])
    value_b = _value(metric, arrays_b[:n_used])
    diff = value_b - value_a
    if metric.binary is not None:
      test = "mcnemar"
      p_value = _mcnemar(items_a[metric.binary], items_b[metric.binary])
    else:
      test = "paired_bootstrap"
      p_value = _paired_bootstrap_p(metric.fn, arrays_a[:n_used],
                                    arrays_b[:n_used], n_resamples, seed)
    out[metric.key] = {
        "a": value_a, "b": value_b, "diff": float(diff),
        "p_value": float(p_value), "test": test,
        "label": stats.label_change(diff, p_value, metric.higher_is_better),
    }
  return out


def _arrays(metric: Metric, items: Mapping[str, object],
            names: Sequence[str], side: str | None = None) -> tuple:
  """The named arrays of one model, checked to exist and align."""
  whose = f" of model {side}" if side else ""
  arrays = []
  for name in names:
    if name not in items:
      raise UserError(f"metric {metric.key!r}: no per-item array {name!r}"
                      f"{whose} (have: {', '.join(sorted(items)) or 'none'})")
    arrays.append(np.asarray(items[name]))
  lengths = {name: len(a) for name, a in zip(names, arrays)}
  if len(set(lengths.values())) > 1:
    raise UserError(f"metric {metric.key!r}: per-item arrays{whose} differ "
                    f"in length: {lengths}")
  return tuple(arrays)


def _check_paired(key: str, names: Sequence[str], arrays_a, arrays_b):
  if names and len(arrays_a[0]) != len(arrays_b[0]):
    raise UserError(f"metric {key!r}: models are not on the same items: "
                    f"model a has {len(arrays_a[0])} items, model b has "
                    f"{len(arrays_b[0])}")


def _value(metric: Metric, arrays) -> float:
  if arrays and len(arrays[0]) == 0:
    return float("nan")
  return float(metric.fn(*arrays))


def _mcnemar(correct_a, correct_b) -> float:
  """McNemar over the items counted (non-NaN) for both models."""
  a = np.asarray(correct_a, dtype=np.float64)
  b = np.asarray(correct_b, dtype=np.float64)
  counted = ~np.isnan(a) & ~np.isnan(b)
  return stats.mcnemar(a[counted], b[counted])


def _paired_bootstrap_p(fn, arrays_a, arrays_b, n_resamples: int,
                        seed: int) -> float:
  if not arrays_a or len(arrays_a[0]) == 0:
    return float("nan")
  _, _, _, p_value = stats.paired_bootstrap_fn(
      fn, arrays_a, arrays_b, n_resamples=n_resamples, seed=seed)
  return p_value
