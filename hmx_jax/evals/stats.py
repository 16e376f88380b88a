"""Confidence intervals and paired significance tests over evaluation items.

Models are compared on the same items, so tests are paired: McNemar on
per-item correctness, or a paired bootstrap on per-item scores (or on any
metric recomputed from resampled items, such as the BBQ bias scores).
Bootstraps resample item indices with replacement using
`np.random.default_rng(seed)`, so results are reproducible; intervals are
percentile intervals. Resamples on which a metric is undefined (NaN) are
left out of the interval and the p-value.
"""

import numpy as np
from scipy import stats as scipy_stats

# Resamples drawn per batch in the vectorized mean path; bounds memory at
# _CHUNK x n indices.
_CHUNK = 64


def _resampled_indices(n: int, n_resamples: int, seed: int):
  """Yields [chunk, n] index arrays, n_resamples rows in all."""
  if n == 0:
    raise ValueError("cannot bootstrap zero items")
  rng = np.random.default_rng(seed)
  done = 0
  while done < n_resamples:
    size = min(_CHUNK, n_resamples - done)
    yield rng.integers(0, n, size=(size, n))
    done += size


def _interval(samples, confidence: float):
  samples = np.asarray(samples, dtype=np.float64)
  samples = samples[~np.isnan(samples)]
  if samples.size == 0:
    return float("nan"), float("nan")
  tail = 100.0 * (1.0 - confidence) / 2.0
  low, high = np.percentile(samples, [tail, 100.0 - tail])
  return float(low), float(high)


def bootstrap_ci(values, n_resamples: int = 1000, seed: int = 0,
                 statistic=np.mean, confidence: float = 0.95):
  """Percentile bootstrap interval of a statistic of per-item values.

  Args:
    values: per-item values [N].
    n_resamples: bootstrap resamples.
    seed: RNG seed.
    statistic: function of a 1-D array returning a scalar (`np.mean` is
      computed vectorized).
    confidence: interval coverage (0.95: 2.5th to 97.5th percentile).

  Returns:
    (point, low, high): the statistic on all values and the interval.
  """
  values = np.asarray(values, dtype=np.float64)
  point = float(statistic(values))
  samples = []
  for idx in _resampled_indices(values.size, n_resamples, seed):
    if statistic is np.mean:
      samples.extend(values[idx].mean(axis=1))
    else:
      samples.extend(statistic(values[row]) for row in idx)
  return (point, *_interval(samples, confidence))


def bootstrap_ci_fn(fn, *arrays, n_resamples: int = 1000, seed: int = 0,
                    confidence: float = 0.95):
  """Bootstrap interval of a metric recomputed on resampled items.

  For metrics that are not means of per-item values, e.g.
  `bootstrap_ci_fn(metrics.bbq_bias_disambig, pred, target, unknown)`.

  Args:
    fn: function of the arrays (same order) returning a scalar.
    *arrays: per-item arrays, all of length N; each resample takes the same
      item indices from all of them.
    n_resamples: bootstrap resamples.
    seed: RNG seed.
    confidence: interval coverage.

  Returns:
    (point, low, high).
  """
  arrays = _same_length(arrays)
  point = float(fn(*arrays))
  samples = [fn(*(a[row] for a in arrays))
             for idx in _resampled_indices(len(arrays[0]), n_resamples, seed)
             for row in idx]
  return (point, *_interval(samples, confidence))


def paired_bootstrap(scores_a, scores_b, n_resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95):
  """Paired bootstrap of the difference in mean score, B minus A.

  The two-sided p-value uses the bootstrap distribution shifted to the null
  of no difference: p = (1 + #{|d* - d| >= |d|}) / (1 + R), with d the
  observed difference, d* the resampled ones and R the resamples (the +1
  keeps p > 0, as a finite number of resamples cannot show p = 0).

  Args:
    scores_a: per-item scores of model A [N] (e.g. the base model).
    scores_b: per-item scores of model B on the same items [N].
    n_resamples: bootstrap resamples.
    seed: RNG seed.
    confidence: interval coverage.

  Returns:
    (mean_diff, low, high, p_value).
  """
  a, b = _same_length((scores_a, scores_b))
  diff = b.astype(np.float64) - a.astype(np.float64)
  observed = float(diff.mean())
  samples = np.concatenate([
      diff[idx].mean(axis=1)
      for idx in _resampled_indices(diff.size, n_resamples, seed)])
  return (observed, *_interval(samples, confidence),
          _shifted_p_value(samples, observed))


def paired_bootstrap_fn(fn, arrays_a, arrays_b, n_resamples: int = 1000,
                        seed: int = 0, confidence: float = 0.95):
  """Paired bootstrap of fn(*arrays_b) - fn(*arrays_a) on shared items.

  E.g. the change in s_DIS between two models:
  `paired_bootstrap_fn(metrics.bbq_bias_disambig, (pred_a, target, unknown),
  (pred_b, target, unknown))`. Both sides take the same item indices in each
  resample. The p-value is as in `paired_bootstrap`.

  Args:
    fn: metric function returning a scalar.
    arrays_a: per-item arrays for model A (length N each).
    arrays_b: per-item arrays for model B (length N each).
    n_resamples: bootstrap resamples.
    seed: RNG seed.
    confidence: interval coverage.

  Returns:
    (diff, low, high, p_value).
  """
  arrays_a, arrays_b = tuple(arrays_a), tuple(arrays_b)
  everything = _same_length(arrays_a + arrays_b)
  arrays_a, arrays_b = everything[:len(arrays_a)], everything[len(arrays_a):]
  observed = float(fn(*arrays_b) - fn(*arrays_a))
  samples = np.array([
      fn(*(x[row] for x in arrays_b)) - fn(*(x[row] for x in arrays_a))
      for idx in _resampled_indices(len(everything[0]), n_resamples, seed)
      for row in idx], dtype=np.float64)
  return (observed, *_interval(samples, confidence),
          _shifted_p_value(samples, observed))


def _shifted_p_value(samples, observed: float) -> float:
  samples = np.asarray(samples, dtype=np.float64)
  samples = samples[~np.isnan(samples)]
  if samples.size == 0 or np.isnan(observed):
    return float("nan")
  extreme = np.sum(np.abs(samples - observed) >= abs(observed))
  return float((1 + extreme) / (1 + samples.size))


def mcnemar(correct_a, correct_b, exact_below: int = 25) -> float:
  """Two-sided McNemar test of paired per-item correctness.

  Only the discordant items count: b = A right and B wrong, c = A wrong and
  B right. Under the null each discordant item goes either way with
  probability 1/2. With few discordant items (b + c < `exact_below`, the
  usual rule of thumb) the exact binomial test is used,
  p = min(1, 2 * P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2);
  otherwise the chi-square test with continuity correction,
  (|b - c| - 1)^2 / (b + c) on 1 degree of freedom.

  Args:
    correct_a: per-item 0/1 (or bool) correctness of model A [N].
    correct_b: per-item correctness of model B on the same items [N].
    exact_below: discordant-count threshold for the exact test.

  Returns:
    The p-value (1.0 when there are no discordant items).
  """
  a, b_ = _same_length((correct_a, correct_b))
  a, b_ = a.astype(bool), b_.astype(bool)
  b = int(np.sum(a & ~b_))
  c = int(np.sum(~a & b_))
  n = b + c
  if n == 0:
    return 1.0
  if n < exact_below:
    return float(min(1.0, 2.0 * scipy_stats.binom.cdf(min(b, c), n, 0.5)))
  statistic = (abs(b - c) - 1.0) ** 2 / n
  return float(scipy_stats.chi2.sf(statistic, df=1))


def label_change(diff: float, p_value: float, higher_is_better: bool = True,
                 alpha: float = 0.05) -> str:
  """Names a significant change of a metric relative to the base model.

  Args:
    diff: metric of the trained model minus that of the base model.
    p_value: p-value of the paired test.
    higher_is_better: direction of improvement (False for bias scores,
      sycophancy rates).
    alpha: significance level.

  Returns:
    "enhanced", "degraded" or "no significant change" (also for NaN inputs
    or a zero difference).
  """
  if not np.isfinite(diff) or not p_value < alpha or diff == 0:
    return "no significant change"
  return "enhanced" if (diff > 0) == higher_is_better else "degraded"


def _same_length(arrays):
  arrays = tuple(np.asarray(a) for a in arrays)
  lengths = {len(a) for a in arrays}
  if len(lengths) != 1:
    raise ValueError(f"per-item arrays differ in length: {sorted(lengths)}")
  return arrays
