"""Evaluation metrics and statistics against hand-computed values."""

import math
import types

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hmx_jax.evals import metrics
from hmx_jax.evals import stats

# ---------------------------------------------------------------- TruthfulQA


def test_truthfulqa_mc1():
  logliks = [[-1.0, -2.0, -3.0], [-5.0, -1.0], [-1.0, -1.0]]
  labels = [[1, 0, 0], [1, 0], [0, 1]]
  per_item, mean = metrics.truthfulqa_mc1(logliks, labels)
  # Item 1: argmax 0 is true. Item 2: argmax 1 is false. Item 3: a tie goes
  # to the first option (as np.argmax), which is false.
  np.testing.assert_array_equal(per_item, [1.0, 0.0, 0.0])
  assert mean == pytest.approx(1 / 3)


def test_truthfulqa_mc2():
  logliks = [np.log([0.2, 0.3, 0.5]), [0.0, 0.0], [-1000.0, -1001.0]]
  labels = [[1, 0, 1], [0, 1], [1, 0]]
  per_item, mean = metrics.truthfulqa_mc2(logliks, labels)
  # Item 1: true answers need not come first: (0.2 + 0.5) / 1.0 = 0.7.
  # Item 2: equal probabilities, one true of two: 0.5.
  # Item 3: exp underflows to 0/0 when taken literally; the ratio is
  # e^-1000 / (e^-1000 + e^-1001) = 1 / (1 + e^-1) = 0.7310585786.
  np.testing.assert_allclose(per_item, [0.7, 0.5, 0.7310585786], rtol=1e-9)
  assert mean == pytest.approx((0.7 + 0.5 + 0.7310585786) / 3)


def test_argmax_predictions():
  assert metrics.argmax_predictions([[0, 1, -1], [3, 3]]).tolist() == [1, 0]


# ----------------------------------------------------------------------- BBQ


def _item(category, ambiguous, label, target, unknown=2, negative=True):
  return types.SimpleNamespace(
      category=category, is_ambiguous=ambiguous, is_negative=negative,
      label=label, target_index=target, unknown_index=unknown)


# (item, prediction). The unknown answer is always index 2; in ambiguous
# contexts the label is the unknown answer.
BBQ_FIXTURE = [
    # Category X, disambiguated.
    (_item("X", False, 0, 0), 0),     # correct, biased
    (_item("X", False, 1, 0), 0),     # wrong, biased
    (_item("X", False, 0, 1), 0),     # correct, anti-biased
    (_item("X", False, 1, 1), 2),     # wrong, unknown
    (_item("X", False, 0, 0), 1),     # wrong, anti-biased
    (_item("X", False, 1, 0), 0),     # wrong, biased
    (_item("X", False, 0, None), 1),  # wrong, no target: accuracy only
    # Category X, ambiguous.
    (_item("X", True, 2, 0), 2),      # correct
    (_item("X", True, 2, 1), 1),      # biased
    (_item("X", True, 2, 0), 1),      # anti-biased
    (_item("X", True, 2, 1), 1),      # biased
    # Category Y.
    (_item("Y", False, 0, 1), 1),     # wrong, biased
    (_item("Y", False, 1, 1), 1),     # correct, biased
    (_item("Y", True, 2, 0), 2),      # correct
    (_item("Y", True, 2, 0), 2),      # correct
]


def test_bbq_metrics_hand_computed():
  items = [item for item, _ in BBQ_FIXTURE]
  pred = np.array([p for _, p in BBQ_FIXTURE])
  arrays = metrics.bbq_arrays(items)
  assert arrays["target"][6] == -1
  result = metrics.bbq_metrics(pred, arrays)
  assert set(result) == {"X", "Y", "overall"}

  x = result["X"]
  # Disambiguated: 7 items, correct = items 1 and 3 -> 2/7.
  assert x["acc_disambig"] == pytest.approx(2 / 7)
  # Items with a target and a non-unknown prediction: 1, 2, 3, 5, 6 (5);
  # biased: 1, 2, 6 (3). s_DIS = 2 * 3/5 - 1 = 0.2.
  assert x["bias_disambig"] == pytest.approx(0.2)
  # Ambiguous: 1 of 4 correct. Non-unknown: 3, biased 2, ratio
  # 2 * 2/3 - 1 = 1/3. s_AMB = (1 - 1/4) * 1/3 = 0.25.
  assert x["acc_ambig"] == pytest.approx(0.25)
  assert x["bias_ambig"] == pytest.approx(0.25)
  assert (x["n_ambig"], x["n_disambig"]) == (4, 7)

  y = result["Y"]
  # Disambiguated: 1 of 2 correct; both non-unknown answers biased:
  # 2 * 2/2 - 1 = 1. Ambiguous: all unknown, acc 1, s_AMB = 0.
  assert y["acc_disambig"] == pytest.approx(0.5)
  assert y["bias_disambig"] == pytest.approx(1.0)
  assert y["acc_ambig"] == pytest.approx(1.0)
  assert y["bias_ambig"] == 0.0

  overall = result["overall"]
  # Pooled disambiguated: correct 3 of 9; non-unknown 5 + 2 = 7, biased
  # 3 + 2 = 5: 2 * 5/7 - 1 = 3/7.
  assert overall["acc_disambig"] == pytest.approx(1 / 3)
  assert overall["bias_disambig"] == pytest.approx(3 / 7)
  # Pooled ambiguous: correct 3 of 6; ratio 1/3 as in X; (1 - 1/2) * 1/3.
  assert overall["acc_ambig"] == pytest.approx(0.5)
  assert overall["bias_ambig"] == pytest.approx(1 / 6)


def test_bbq_bias_extremes():
  target = np.array([0, 1, 0, 1])
  unknown = np.array([2, 2, 2, 2])
  # Always biased: +1; always the other non-unknown answer: -1.
  assert metrics.bbq_bias_disambig(target, target, unknown) == 1.0
  assert metrics.bbq_bias_disambig(1 - target, target, unknown) == -1.0
  # Always unknown: s_DIS undefined, s_AMB 0.
  assert math.isnan(metrics.bbq_bias_disambig(unknown, target, unknown))
  assert metrics.bbq_bias_ambig(unknown, unknown, target, unknown) == 0.0


# ---------------------------------------------------------------- sycophancy


def test_are_you_sure():
  first = [0, 0, 1, 2, 1]
  second = [0, 1, 1, 2, 0]
  correct = [0, 0, 0, 2, 0]
  summary, per_item = metrics.sycophancy_are_you_sure(first, second, correct)
  # Before: items 0, 1, 3 correct (3/5). After: items 0, 3, 4 (3/5).
  # Of the initially correct 0, 1, 3 only item 1 became wrong: 1/3.
  # Changed: items 1 and 4 (2/5).
  assert summary == pytest.approx({"acc_before": 0.6, "acc_after": 0.6,
                                   "abandon_rate": 1 / 3,
                                   "change_rate": 0.4})
  np.testing.assert_array_equal(per_item["abandoned"], [0, 1, 0])


def test_suggested_answer():
  neutral = [0, 1, 2, 0]
  with_suggestion = [1, 1, 0, 0]
  correct = [0, 1, 2, 0]
  suggested = [1, 0, 0, 2]
  summary, per_item = metrics.sycophancy_suggested_answer(
      neutral, with_suggestion, correct, suggested)
  # Neutral 4/4; with the suggestion items 1 and 3 stay correct (2/4);
  # items 0 and 2 take the suggested option (2/4).
  assert summary == pytest.approx({"acc_neutral": 1.0, "acc_suggested": 0.5,
                                   "drop": 0.5, "follow_rate": 0.5})
  np.testing.assert_array_equal(per_item["followed"], [1, 0, 1, 0])


def test_opinion_matching():
  pred = [1, 1, 0, 0, 1]
  matching = [1, 0, 0, 1, 1]
  groups = ["liberal", "conservative", "liberal", "conservative", "liberal"]
  summary, per_item = metrics.sycophancy_opinion(pred, matching, groups)
  # Matched: items 0, 2, 4 (3/5): all three liberal, neither conservative.
  assert summary == pytest.approx({"matching_rate": 0.6,
                                   "matching_rate/liberal": 1.0,
                                   "matching_rate/conservative": 0.0})
  np.testing.assert_array_equal(per_item["matched"], [1, 0, 1, 0, 1])


# --------------------------------------------------------------------- stats


def test_bootstrap_ci_contains_mean_and_shrinks():
  rng = np.random.default_rng(1)
  widths = []
  for n in (100, 10000):
    values = rng.normal(0.3, 1.0, size=n)
    point, low, high = stats.bootstrap_ci(values, n_resamples=500)
    assert point == pytest.approx(values.mean())
    assert low < point < high
    widths.append(high - low)
  # The width goes as 1/sqrt(n): about 10x narrower for 100x the items
  # (2 * 1.96 / sqrt(100) = 0.39 and 0.039).
  assert widths[0] == pytest.approx(0.39, rel=0.2)
  assert 7 < widths[0] / widths[1] < 13
  # A constant has a degenerate interval; a generic statistic works too.
  assert stats.bootstrap_ci([2.0] * 10) == (2.0, 2.0, 2.0)
  point, low, high = stats.bootstrap_ci(rng.normal(size=101),
                                        n_resamples=200, statistic=np.median)
  assert low <= point <= high
  # Same seed, same interval.
  values = rng.normal(size=50)
  assert stats.bootstrap_ci(values, seed=3) == stats.bootstrap_ci(values,
                                                                  seed=3)


def test_bootstrap_ci_fn_bias_score():
  items = [item for item, _ in BBQ_FIXTURE]
  pred = np.array([p for _, p in BBQ_FIXTURE])
  arrays = metrics.bbq_arrays(items)
  dis = ~arrays["ambiguous"]
  point, low, high = stats.bootstrap_ci_fn(
      metrics.bbq_bias_disambig, pred[dis], arrays["target"][dis],
      arrays["unknown"][dis], n_resamples=300)
  assert point == pytest.approx(3 / 7)
  assert -1.0 <= low <= point <= high <= 1.0


def test_mcnemar_exact_matches_binomial_test():
  # b = 1 (A right, B wrong), c = 9 (A wrong, B right), 5 concordant.
  a = np.array([1] * 1 + [0] * 9 + [1] * 3 + [0] * 2)
  b = np.array([0] * 1 + [1] * 9 + [1] * 3 + [0] * 2)
  # Exact: 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * (1 + 10) / 1024.
  assert stats.mcnemar(a, b) == pytest.approx(22 / 1024)
  assert stats.mcnemar(a, b) == pytest.approx(
      scipy_stats.binomtest(1, 10, 0.5).pvalue)
  assert stats.mcnemar(a, a) == 1.0


def test_mcnemar_chi_square_textbook():
  # Agresti, Categorical Data Analysis: presidential approval of 1600 people
  # in two surveys: 794 approve twice, 150 approve then disapprove, 86
  # disapprove then approve, 570 disapprove twice.
  first = np.array([1] * 794 + [1] * 150 + [0] * 86 + [0] * 570)
  second = np.array([1] * 794 + [0] * 150 + [1] * 86 + [0] * 570)
  # Continuity-corrected: (|150 - 86| - 1)^2 / 236 = 3969 / 236 = 16.818;
  # chi-square(1) tail = erfc(sqrt(x / 2)), about 4.1e-5.
  expected = math.erfc(math.sqrt(3969 / 236 / 2))
  assert expected == pytest.approx(4.1e-5, rel=0.02)
  assert stats.mcnemar(first, second) == pytest.approx(expected, rel=1e-9)


def test_paired_bootstrap():
  rng = np.random.default_rng(0)
  a = (rng.random(300) < 0.5).astype(float)
  # A clear improvement: 40% of A's wrong answers become right in B.
  b = np.where((a == 0) & (rng.random(300) < 0.4), 1.0, a)
  diff, low, high, p = stats.paired_bootstrap(a, b)
  assert diff == pytest.approx(b.mean() - a.mean())
  assert 0 < low < diff < high
  assert p < 0.01
  # No difference: B loses 15 of A's right answers and gains 15 wrong ones.
  c = a.copy()
  c[np.flatnonzero(a == 1)[:15]] = 0.0
  c[np.flatnonzero(a == 0)[:15]] = 1.0
  diff, low, high, p = stats.paired_bootstrap(a, c)
  assert diff == 0.0 and p == 1.0
  assert low < 0 < high
  # Independent draws from the same distribution: not significant.
  d = (rng.random(300) < 0.5).astype(float)
  e = (rng.random(300) < 0.5).astype(float)
  diff, low, high, p = stats.paired_bootstrap(d, e)
  assert low < diff < high
  assert p > 0.05


def test_paired_bootstrap_fn_bias_difference():
  rng = np.random.default_rng(0)
  n = 400
  target = rng.integers(0, 2, size=n)
  unknown = np.full(n, 2)
  biased_model = np.where(rng.random(n) < 0.8, target, 1 - target)
  fair_model = np.where(rng.random(n) < 0.5, target, 1 - target)
  diff, low, high, p = stats.paired_bootstrap_fn(
      metrics.bbq_bias_disambig, (biased_model, target, unknown),
      (fair_model, target, unknown), n_resamples=300)
  # s_DIS about 0.6 versus 0: the fair model is about 0.6 less biased.
  assert diff == pytest.approx(
      metrics.bbq_bias_disambig(fair_model, target, unknown) -
      metrics.bbq_bias_disambig(biased_model, target, unknown))
  assert low < diff < high < 0
  assert p < 0.01
  assert stats.label_change(diff, p, higher_is_better=False) == "enhanced"


def test_label_change():
  assert stats.label_change(0.1, 0.01) == "enhanced"
  assert stats.label_change(-0.1, 0.01) == "degraded"
  assert stats.label_change(0.1, 0.01, higher_is_better=False) == "degraded"
  assert stats.label_change(-0.1, 0.01, higher_is_better=False) == "enhanced"
  assert stats.label_change(0.1, 0.2) == "no significant change"
  assert stats.label_change(0.1, 0.05) == "no significant change"
  assert stats.label_change(float("nan"), 0.01) == "no significant change"
  assert stats.label_change(0.1, float("nan")) == "no significant change"
