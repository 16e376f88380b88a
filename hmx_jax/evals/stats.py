"""Confidence intervals, paired tests and multiplicity over evaluation items.

Models are compared on the same items, so tests are paired: McNemar on
per-item correctness, otherwise a paired permutation test of the metric
itself (each item's results are swapped between the two models at random).
Both are valid under the null hypothesis that the two models' results on
each item are exchangeable, which is what "no difference" means here.
Labels are decided on Holm-adjusted p-values (`holm`), one family of
metrics at a time.

Metric functions are vectorized over resamples: `fn(*arrays)` takes arrays
of shape [B, N, ...] (B resamples of N items) and returns B values, NaN
where the metric is undefined. Resamples and permutations act on the item
axis only, so an item's trailing entries (e.g. its option orders) move
together. Random draws use `np.random.default_rng(seed)`, so results are
reproducible; resamples on which a metric is undefined are left out.
"""

import numpy as np
from scipy import stats as scipy_stats

# Entries per array in one batch of resamples: about what stays in cache
# (batches of at least _MIN_BATCH resamples, to bound Python overhead).
_BATCH_ENTRIES = 1 << 16
_MIN_BATCH = 16


def _batch(arrays) -> int:
  """Resamples per batch for these per-item arrays."""
  entries = max(max((np.asarray(a).size for a in arrays), default=1), 1)
  return max(_MIN_BATCH, _BATCH_ENTRIES // entries)


def _same_length(arrays):
  arrays = tuple(np.asarray(a) for a in arrays)
  lengths = {len(a) for a in arrays}
  if len(lengths) != 1:
    raise ValueError(f"per-item arrays differ in length: {sorted(lengths)}")
  return arrays


def _resampled_indices(n: int, n_resamples: int, seed: int, batch: int):
  """Yields [batch, n] item-index arrays, n_resamples rows in all."""
  if n == 0:
    raise ValueError("cannot bootstrap zero items")
  rng = np.random.default_rng(seed)
  done = 0
  while done < n_resamples:
    size = min(batch, n_resamples - done)
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


def point_value(fn, *arrays) -> float:
  """fn on all items (a batch of one)."""
  return float(np.asarray(fn(*(np.asarray(a)[None] for a in arrays)))[0])


def bootstrap_ci(fn, *arrays, n_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95):
  """Percentile bootstrap interval of a metric recomputed on resampled items.

  E.g. `bootstrap_ci(item_mean, correct)` or, for BBQ's s_DIS, the metric of
  (pred, target, unknown, ...) arrays.

  Args:
    fn: vectorized metric (see the module docstring).
    *arrays: per-item arrays, all with N items on axis 0; each resample
      takes the same item indices from all of them.
    n_resamples: bootstrap resamples.
    seed: RNG seed.
    confidence: interval coverage (0.95: 2.5th to 97.5th percentile).

  Returns:
    (point, low, high): the metric on all items and the interval.
  """
  arrays = _same_length(arrays)
  point = point_value(fn, *arrays)
  samples = np.concatenate([
      np.asarray(fn(*(a[idx] for a in arrays)), dtype=np.float64)
      for idx in _resampled_indices(len(arrays[0]), n_resamples, seed,
                                    _batch(arrays))])
  return (point, *_interval(samples, confidence))


def _swap_patterns(n: int, n_resamples: int, seed: int, batch: int):
  """Yields ([batch, n] bool swap masks, exact).

  Every one of the 2^n patterns once when 2^n <= n_resamples (an exact
  test), otherwise n_resamples random ones.
  """
  exact = n < 63 and 2 ** n <= n_resamples
  if exact:
    bits = np.arange(n)
    for start in range(0, 2 ** n, batch):
      codes = np.arange(start, min(start + batch, 2 ** n))
      yield ((codes[:, None] >> bits) & 1).astype(bool), True
    return
  rng = np.random.default_rng(seed)
  done = 0
  while done < n_resamples:
    size = min(batch, n_resamples - done)
    yield rng.random((size, n)) < 0.5, False
    done += size


def paired_permutation_test(fn, arrays_a, arrays_b, n_resamples: int = 1000,
                            seed: int = 0):
  """Two-sided paired permutation test of fn(*arrays_b) - fn(*arrays_a).

  Under the null each item's results are as likely to belong to either
  model, so each permutation swaps the two models' arrays on a random set
  of items. With d the observed difference and d* the permuted ones,
  p = #{|d*| >= |d|} / 2^N over all 2^N swap patterns when 2^N <=
  `n_resamples` (exact), else p = (1 + #{|d*| >= |d|}) / (1 + R) over R
  random patterns (the +1 counts the observed assignment, which keeps the
  test valid). Permutations on which the metric is undefined are left out.

  Args:
    fn: vectorized metric (see the module docstring).
    arrays_a: per-item arrays of model A, N items each on axis 0.
    arrays_b: the same arrays of model B on the same items.
    n_resamples: random permutations (if the test is not exact).
    seed: RNG seed.

  Returns:
    (diff, p_value); p is NaN when the difference is undefined.
  """
  arrays_a, arrays_b = tuple(arrays_a), tuple(arrays_b)
  everything = _same_length(arrays_a + arrays_b)
  arrays_a, arrays_b = everything[:len(arrays_a)], everything[len(arrays_a):]
  observed = point_value(fn, *arrays_b) - point_value(fn, *arrays_a)
  if np.isnan(observed):
    return float("nan"), float("nan")
  # Arrays the models share (the items' labels) need no swapping; when
  # they share all of them every permutation ties.
  differ = [not np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
            for a, b in zip(arrays_a, arrays_b)]
  if not any(differ):
    return float(observed), 1.0
  # Float noise must not turn a tie (|d*| == |d|) into a smaller |d*|.
  threshold = abs(observed) - 1e-9 * max(1.0, abs(observed))
  extreme = counted = 0
  exact = False
  for swap, exact in _swap_patterns(len(everything[0]), n_resamples, seed,
                                    _batch(everything)):
    side_a, side_b = [], []
    for a, b, d in zip(arrays_a, arrays_b, differ):
      if not d:
        side_a.append(a[None])
        side_b.append(a[None])
        continue
      mask = swap.reshape(swap.shape + (1,) * (a.ndim - 1))
      side_a.append(np.where(mask, b[None], a[None]))
      side_b.append(np.where(mask, a[None], b[None]))
    diffs = (np.asarray(fn(*side_b), dtype=np.float64) -
             np.asarray(fn(*side_a), dtype=np.float64))
    diffs = diffs[~np.isnan(diffs)]
    extreme += int(np.sum(np.abs(diffs) >= threshold))
    counted += diffs.size
  if exact:
    return float(observed), float(extreme / counted)
  return float(observed), float((1 + extreme) / (1 + counted))


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


def holm(p_values) -> np.ndarray:
  """Holm's step-down adjusted p-values of one family of tests.

  With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m), the
  adjusted value of p_(i) is max over j <= i of min(1, (m - j + 1) p_(j)).
  Rejecting where the adjusted value is below alpha keeps the probability
  of any false rejection in the family at most alpha, whatever the
  dependence between the tests. NaN p-values (undefined tests) stay NaN and
  do not count in m.

  Args:
    p_values: the family's raw p-values [m].

  Returns:
    The adjusted p-values, in the input order.
  """
  p = np.asarray(p_values, dtype=np.float64)
  out = np.full(p.shape, np.nan)
  finite = np.flatnonzero(~np.isnan(p))
  order = finite[np.argsort(p[finite], kind="stable")]
  m = order.size
  scaled = (m - np.arange(m)) * p[order]
  out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
  return out


def label_change(diff: float, p_value: float, higher_is_better: bool = True,
                 alpha: float = 0.05) -> str:
  """Names a significant change of a metric relative to the base model.

  Args:
    diff: metric of the trained model minus that of the base model.
    p_value: (adjusted) p-value of the paired test.
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
