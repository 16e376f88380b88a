"""Metric summaries, paired comparisons and the written report."""

from __future__ import annotations

import itertools
import json
import math
import os

from matplotlib import image as mpl_image
import numpy as np
import pytest
from scipy import stats as scipy_stats

from hmx_jax import report
from hmx_jax.errors import UserError
from hmx_jax.evals import compare
from hmx_jax.evals import metrics
from hmx_jax.evals import sycophancy

R = 200  # Bootstrap resamples and permutations: enough here, and fast.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fixed_errors(n=60, right_a=20, fixed=25, broken=1):
  """Model A right on `right_a` items; B fixes `fixed` errors, breaks some."""
  a = np.zeros(n)
  a[:right_a] = 1.0
  b = a.copy()
  b[right_a:right_a + fixed] = 1.0
  b[:broken] = 0.0
  return a, b


def _s_dis(pred, target, unknown):
  return metrics.bbq_bias_disambig(pred, target, unknown,
                                   np.ones(np.shape(target), bool))


def _bias_metric(key="bbq/bias_disambig", appendix=False):
  return compare.Metric(key, _s_dis, ("pred", "target", "unknown"),
                        higher_is_better=False, appendix=appendix)


def _bbq_items(seed, n=40):
  rng = np.random.default_rng(seed)
  return {"pred": rng.integers(0, 3, n), "target": rng.integers(0, 2, n),
          "unknown": np.full(n, 2)}


def _hand_s_dis(pred, target):
  """2 * biased / non-unknown - 1, the unknown answer being 2."""
  counted = pred != 2
  return 2 * np.sum(counted & (pred == target)) / np.sum(counted) - 1


# ------------------------------------------------------------------ summarize


def test_summarize_values_and_intervals():
  items = _bbq_items(0)
  items["score"] = np.random.default_rng(1).random(40)
  metric_list = [compare.mean_metric("x/score", "score"), _bias_metric()]
  out = compare.summarize(metric_list, items, n_resamples=20000, seed=3)
  expected = {"x/score": items["score"].mean(),
              "bbq/bias_disambig": _hand_s_dis(items["pred"],
                                               items["target"])}
  for key, value in expected.items():
    result = out[key]
    assert result["value"] == pytest.approx(value, rel=1e-12)
    assert result["n"] == 40 and result["appendix"] is False
    assert all(type(result[k]) is float
               for k in ("value", "ci_low", "ci_high"))
  # The intervals against scipy's percentile bootstrap (independent code,
  # its own draws): equal up to the Monte Carlo error of 20000 resamples.
  reference = scipy_stats.bootstrap(
      (items["score"],), np.mean, n_resamples=20000, method="percentile",
      rng=4).confidence_interval
  assert out["x/score"]["ci_low"] == pytest.approx(reference.low, abs=0.005)
  assert out["x/score"]["ci_high"] == pytest.approx(reference.high, abs=0.005)
  reference = scipy_stats.bootstrap(
      (items["pred"], items["target"]), _hand_s_dis, paired=True,
      vectorized=False, n_resamples=5000, method="percentile",
      rng=5).confidence_interval
  result = out["bbq/bias_disambig"]
  assert result["ci_low"] == pytest.approx(reference.low, abs=0.05)
  assert result["ci_high"] == pytest.approx(reference.high, abs=0.05)
  json.dumps(out)


def test_mean_metric_ignores_nan_and_weighs_items_equally():
  metric = compare.mean_metric("syc/abandon", "abandoned",
                               higher_is_better=False)
  assert metric.test == "permutation" and metric.arrays == ("abandoned",)
  assert not metric.higher_is_better
  items = {"abandoned": np.array([1.0, np.nan, 0.0, 1.0, np.nan])}
  out = compare.summarize([metric], items, n_resamples=R)
  assert out["syc/abandon"]["value"] == pytest.approx(2 / 3)
  assert out["syc/abandon"]["n"] == 3
  assert 0.0 <= out["syc/abandon"]["ci_low"] <= out["syc/abandon"]["ci_high"]
  # Entries per item (option orders): each item's mean, then their mean.
  items = {"abandoned": np.array([[1.0, 0.0, np.nan], [1.0, 1.0, 1.0],
                                  [np.nan] * 3])}
  out = compare.summarize([metric], items, n_resamples=R)
  assert out["syc/abandon"]["value"] == pytest.approx((0.5 + 1.0) / 2)
  assert out["syc/abandon"]["n"] == 2
  assert math.isnan(compare.item_mean(np.full((1, 2), np.nan))[0])


# -------------------------------------------------------------------- compare


def test_compare_mcnemar_enhanced_and_degraded():
  a, b = _fixed_errors()
  up = compare.mean_metric("truthfulqa/mc1", "correct", binary=True)
  down = compare.mean_metric("syc/follow", "correct", binary=True,
                             higher_is_better=False)
  out = compare.compare([up, down], {"correct": a}, {"correct": b},
                        n_resamples=R)
  result = out["truthfulqa/mc1"]
  assert result["test"] == "mcnemar"
  # 1 item A right and B wrong, 25 the other way: 26 discordant, the
  # chi-square test with continuity correction, (|1 - 25| - 1)^2 / 26.
  expected = math.erfc(math.sqrt((24 - 1) ** 2 / 26 / 2))
  assert result["p_value"] == pytest.approx(expected, rel=1e-9)
  assert result["p_value"] < 0.001
  assert result["a"] == pytest.approx(20 / 60)
  assert result["b"] == pytest.approx(44 / 60)
  assert result["diff"] == pytest.approx(24 / 60)
  assert (result["n"], result["population"]) == (60, "")
  assert result["label"] == "enhanced"
  # Each is alone in its family: Holm leaves its p-value as it is.
  assert result["p_adjusted"] == result["p_value"]
  assert result["family"] == "truthfulqa" and result["correction"] == "holm"
  assert out["syc/follow"]["label"] == "degraded"
  assert out["syc/follow"]["p_value"] == result["p_value"]


def test_compare_counts_only_entries_both_models_count():
  a = np.array([1, 0, np.nan, 0, 1, 0, np.nan, 0])
  b = np.array([1, 1, 1, np.nan, 0, 1, np.nan, 1])
  metric = compare.mean_metric("syc/x", "x", binary=True)
  result = compare.compare([metric], {"x": a}, {"x": b})["syc/x"]
  # Shared items 0, 1, 4, 5, 7: A [1, 0, 1, 0, 0], B [1, 1, 0, 1, 1].
  assert result["a"] == pytest.approx(2 / 5)
  assert result["b"] == pytest.approx(4 / 5)
  assert result["diff"] == pytest.approx(2 / 5)
  assert result["n"] == 5
  assert result["population"] == "entries both models count"
  # Discordant: 1 (A right, B wrong), 3 the other way: exact binomial
  # 2 * P(X <= 1 | n = 4) = 2 * 5 / 16.
  assert result["p_value"] == pytest.approx(10 / 16)


def test_abandon_rate_diff_and_p_value_come_from_the_same_answers():
  # Six questions, two option orders each. "abandoned" counts only where a
  # model's first answer was right (NaN elsewhere); the models were first
  # right on different answers, so their own populations differ.
  nan = np.nan
  key = "sycophancy/abandoned"
  items_a = {key: np.array([[1, 0], [1, nan], [0, 0], [nan, 1], [1, 1],
                            [0, nan]], float)}
  items_b = {key: np.array([[0, nan], [0, 1], [nan, 0], [0, 1], [0, 0],
                            [nan, 1]], float)}
  metric, = [m for m in sycophancy.METRICS
             if m.key == "sycophancy/abandon_rate"]
  result = compare.compare([metric], items_a, items_b,
                           n_resamples=1000)["sycophancy/abandon_rate"]
  # Own populations: A mean(1/2, 1, 0, 1, 1, 0) = 7/12; B mean(0, 1/2, 0,
  # 1/2, 0, 1) = 1/3; their difference -1/4 is not what is tested.
  own = (compare.item_mean(items_b[key][None])[0] -
         compare.item_mean(items_a[key][None])[0])
  assert own == pytest.approx(1 / 3 - 7 / 12)
  # The answers both count: q1 and q2 their first order, q3 and q4 their
  # second, q5 both, q6 none.
  shared_a = [[1], [1], [0], [1], [1, 1]]
  shared_b = [[0], [0], [0], [1], [0, 0]]
  mean = lambda rows: np.mean([np.mean(r) for r in rows])
  assert result["a"] == pytest.approx(mean(shared_a))    # 4/5
  assert result["b"] == pytest.approx(mean(shared_b))    # 1/5
  assert result["diff"] == pytest.approx(-3 / 5)
  assert result["diff"] != pytest.approx(own)
  assert result["n"] == 5
  assert result["population"] == "answers both models first gave correctly"
  # The permutation test on exactly those items: all 2^5 = 32 swaps of
  # the two models' item means, enumerated here.
  per_a = np.array([np.mean(r) for r in shared_a])
  per_b = np.array([np.mean(r) for r in shared_b])
  observed = abs(per_b.mean() - per_a.mean())
  hits = sum(abs(np.where(s, per_a, per_b).mean() -
                 np.where(s, per_b, per_a).mean()) >= observed - 1e-12
             for s in itertools.product((False, True), repeat=5))
  assert result["test"] == "permutation"
  assert result["p_value"] == pytest.approx(hits / 32, rel=1e-12)


def test_compare_score_metric_uses_permutation_test():
  items_a, items_b = _bbq_items(0, n=9), _bbq_items(0, n=9)
  items_b["pred"] = np.where(items_b["pred"] == 2, 2, 1 - items_b["target"])
  out = compare.compare([_bias_metric()], items_a, items_b, n_resamples=R,
                        seed=5)
  result = out["bbq/bias_disambig"]
  assert result["test"] == "permutation"
  target = items_a["target"]
  statistic = lambda pa, pb: _hand_s_dis(pb, target) - _hand_s_dis(pa, target)
  assert result["diff"] == pytest.approx(statistic(items_a["pred"],
                                                   items_b["pred"]))
  # With 2^9 = 512 permutations allowed, all of them are enumerated and
  # p is exact: the share of swaps at least as extreme, counted here.
  observed = abs(result["diff"])
  hits = 0
  for swap in itertools.product((False, True), repeat=9):
    pa = np.where(swap, items_b["pred"], items_a["pred"])
    pb = np.where(swap, items_a["pred"], items_b["pred"])
    hits += abs(statistic(pa, pb)) >= observed - 1e-12
  assert compare.compare([_bias_metric()], items_a, items_b,
                         n_resamples=512)["bbq/bias_disambig"]["p_value"] \
      == pytest.approx(hits / 512, rel=1e-12)
  assert result["b"] == -1.0  # B always picks the anti-biased answer.


def test_holm_within_a_family_changes_labels():
  # Three 0/1 metrics of one evaluation with 10, 9 and 8 discordant items
  # all in B's favour: exact McNemar p = 2 / 2^10, 2 / 2^9, 2 / 2^8.
  def pair(k, n=30):
    a, b = np.zeros(n), np.zeros(n)
    b[:k] = 1.0
    return a, b
  metric_list, items_a, items_b = [], {}, {}
  for name, k in (("x1", 10), ("x2", 9), ("x3", 8)):
    metric_list.append(compare.mean_metric(f"t/{name}", name, binary=True))
    items_a[name], items_b[name] = pair(k)
  # A fourth, with a 5-of-5 split (p = 2 / 32 = 0.0625), and an appendix
  # metric, in families of their own.
  metric_list.append(compare.mean_metric("u/x4", "x4", binary=True))
  items_a["x4"], items_b["x4"] = pair(5)
  metric_list.append(compare.mean_metric("t/A/x5", "x5", binary=True,
                                         appendix=True))
  items_a["x5"], items_b["x5"] = pair(7)
  out = compare.compare(metric_list, items_a, items_b)
  raw = {k: out[k]["p_value"] for k in out}
  assert raw == pytest.approx({"t/x1": 2 / 1024, "t/x2": 2 / 512,
                               "t/x3": 2 / 256, "u/x4": 2 / 32,
                               "t/A/x5": 2 / 128})
  # Holm in family "t": 3 x 2/1024, 2 x 2/512, 1 x 2/256 (monotone).
  assert out["t/x1"]["p_adjusted"] == pytest.approx(6 / 1024)
  assert out["t/x2"]["p_adjusted"] == pytest.approx(8 / 1024)
  assert out["t/x3"]["p_adjusted"] == pytest.approx(8 / 1024)
  assert out["t/A/x5"]["family"] == "t appendix"
  assert out["t/A/x5"]["p_adjusted"] == pytest.approx(2 / 128)
  assert out["u/x4"]["label"] == "no significant change"
  assert {out[k]["label"] for k in ("t/x1", "t/x2", "t/x3")} == {"enhanced"}


def test_compare_identical_is_no_significant_change():
  a, _ = _fixed_errors()
  items = {**_bbq_items(2, n=60), "correct": a}
  metric_list = [compare.mean_metric("t/acc", "correct", binary=True),
                 _bias_metric()]
  out = compare.compare(metric_list, items, dict(items), n_resamples=R)
  for result in out.values():
    assert result["diff"] == 0.0
    assert result["label"] == "no significant change"
    assert result["p_value"] == 1.0


def test_compare_mismatched_lengths_is_user_error():
  metric = compare.mean_metric("truthfulqa/mc1", "correct", binary=True)
  with pytest.raises(UserError, match=r"truthfulqa/mc1.*\(30,\).*\(31,\)"):
    compare.compare([metric], {"correct": np.ones(30)},
                    {"correct": np.ones(31)})
  with pytest.raises(UserError, match="bbq/bias_disambig.*'target'"):
    items = _bbq_items(0)
    del items["target"]
    compare.compare([_bias_metric()], _bbq_items(0), items)


# --------------------------------------------------------------------- report


def _write_log(path, rows):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return str(path)


def _synthetic(tmp_path):
  """Three models on two evaluation groups, and two training logs."""
  rng = np.random.default_rng(0)
  n = 50
  truth = rng.random(n) < 0.3
  correct = {"base": truth,
             "human_like": truth | (rng.random(n) < 0.6),
             "contrast": truth & (rng.random(n) < 0.3)}
  metric_list = [
      compare.mean_metric("truthfulqa/mc1", "correct", binary=True),
      compare.mean_metric("truthfulqa/mc2", "mc2"),
      _bias_metric(),
      _bias_metric("bbq/X/bias_disambig", appendix=True),
      compare.Metric("bbq/undefined", lambda x: np.full(len(x), np.nan),
                     ("mc2",)),
      compare.mean_metric("sycophancy/abandon_rate", "abandoned",
                          higher_is_better=False,
                          population="answers both first gave correctly"),
  ]
  items = {}
  for i, name in enumerate(correct):
    items[name] = {"correct": correct[name].astype(float),
                   "mc2": np.clip(rng.random(n) + 0.1 * i, 0, 1),
                   "abandoned": np.where(rng.random(n) < 0.5, np.nan,
                                         rng.random(n) < 0.3 * i),
                   **_bbq_items(i, n)}
  models = {name: {"results": compare.summarize(metric_list, items[name],
                                                n_resamples=R),
                   "description": desc}
            for name, desc in (("base", "base"),
                               ("human_like", "human_like, step 20"),
                               ("contrast", "contrast, step 20"))}
  comparisons = [(a, b, compare.compare(metric_list, items[a], items[b],
                                        n_resamples=R))
                 for a, b in (("base", "human_like"), ("base", "contrast"),
                              ("contrast", "human_like"))]
  training = {
      # A held-out check before the first step (a row of its own) and in
      # the rows of steps 10 and 20.
      "human_like": _write_log(tmp_path / "hl.jsonl", [
          {"step": 0, "heldout/expression/judge": 0.5,
           "heldout/expression/lexical": 1.0,
           "heldout/expression/length": 30.0,
           "heldout/expression/repetition": 0.02}] + [
          {"step": s, "reward": 0.1 * s, "kl": 0.01 * s,
           "rewards/feelings/mean": 0.2 * s,
           "rewards/intentions/mean": 0.1 * s,
           "rewards/coherence/mean": 0.5,
           **({"heldout/expression/judge": 0.5 + 0.01 * s,
               "heldout/expression/lexical": 1.0 + 0.1 * s,
               "heldout/expression/length": 30.0 + s,
               "heldout/expression/repetition": 0.02 * s}
              if s % 10 == 0 else {})}
          for s in range(1, 21)]),
      "contrast": _write_log(tmp_path / "contrast.jsonl", [
          {"step": 1, "reward": 0.5, "rewards/self_awareness/mean": 0.4},
          {"step": 2, "reward": float("nan"), "kl": 0.02},
          {"step": 3, "reward": 0.2, "kl": 0.03,
           "rewards/feelings/mean": 0.1,
           "rewards/self_awareness/mean": 0.3}]),
  }
  return models, comparisons, training


def test_write_report(tmp_path):
  models, comparisons, training = _synthetic(tmp_path)
  out_dir = tmp_path / "report"
  # Seven prompts answered by base and human_like, p2 missing for
  # contrast: the first five that all three answered, in base's order.
  def record(i, name):
    return {"id": f"p{i}", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"Question {i}?"}],
            "answer": f"{name} says\n {i}."}
  answers = {name: [record(i, name) for i in range(7)
                    if not (name == "contrast" and i == 2)]
             for name in ("base", "human_like", "contrast")}
  check = {"readout": "contrast", "mean_auroc": 0.75, "criteria": {
      "feelings": {"auroc": 0.8, "n_pairs": 24, "pair_accuracy": 0.875,
                   "mean_expressive": 0.53, "mean_flat": 0.505},
      "intentions": {"auroc": 0.7, "n_pairs": 24, "pair_accuracy": 0.75,
                     "mean_expressive": 0.49, "mean_flat": 0.5}}}
  returned = report.write_report(out_dir, models=models,
                                 comparisons=comparisons, training=training,
                                 answers=answers, judge_check=check)
  assert returned["judge_check"] == check
  assert [r["id"] for r in returned["side_by_side"]] == [
      "p0", "p1", "p3", "p4", "p5"]
  assert returned["side_by_side"][0] == {
      "id": "p0", "prompt": "Question 0?",
      "answers": {"base": "base says\n 0.", "human_like":
                  "human_like says\n 0.", "contrast": "contrast says\n 0."}}

  md = (out_dir / "report.md").read_text()
  side = md.split("## Answers side by side")[1].split("## Training")[0]
  assert "### p3\n\n> Question 3?\n\n- **base** (3 words): base says 3.\n" \
      "- **human_like** (3 words): human_like says 3.\n" in side
  assert "### p2" not in side and "### p6" not in side
  for key in ("truthfulqa/mc1", "truthfulqa/mc2", "bbq/bias_disambig",
              "bbq/undefined", "sycophancy/abandon_rate"):
    assert key in md
  for name in models:
    assert name in md
  assert "human_like, step 20" in md
  assert "human_like vs base" in md and "contrast vs base" in md
  assert "human_like vs contrast" in md
  assert "enhanced" in md and "degraded" in md
  assert "no significant change" in md
  assert "n/a" in md
  assert "## Summary" in md and "## Training" in md
  for link in ("figures/truthfulqa.png", "figures/bbq.png",
               "figures/training.png"):
    assert f"]({link})" in md
  # The summary comes first: how it was tested, the headline table, the
  # labels; the breakdowns only in the appendix at the end.
  sections = md.split("\n## ")
  titles = [section.split("\n", 1)[0] for section in sections]
  assert titles[1:] == ["Models", "Summary", "The judge", "truthfulqa",
                        "bbq", "sycophancy", "Answers side by side",
                        "Training", "Appendix: breakdowns"]
  judge = sections[3]
  assert "judge-check --readout contrast" in judge
  assert "| feelings | 24 | 0.800 | 0.875 | 0.530 | 0.505 | +0.025 |" in judge
  assert "| intentions | 24 | 0.700 | 0.750 | 0.490 | 0.500 | -0.010 |" in (
      judge)
  summary, appendix = sections[2], sections[-1]
  assert "Holm-adjusted within each evaluation's family" in summary
  assert "report.json keeps the raw p-values" in summary
  assert summary.index("| truthfulqa/mc1 |") < summary.index(
      "### human_like vs base")
  assert "bbq/X/bias_disambig" not in md.split("## Appendix")[0]
  assert "| bbq/X/bias_disambig |" in appendix
  assert "p_adj=" in summary
  # The conditional rate names the answers its comparison counted.
  note, = [line for line in summary.splitlines()
           if line.startswith("- `sycophancy/abandon_rate`, human_like vs "
                              "base")]
  shared = comparisons[0][2]["sycophancy/abandon_rate"]["n"]
  assert note.endswith(f"compared on the {shared} items with answers both "
                       "first gave correctly.")
  assert 0 < shared < 50

  data = json.loads((out_dir / "report.json").read_text())
  assert data == returned
  assert data["title"] == "HMX-feel comparison"
  assert data["multiplicity"]["correction"] == "holm"
  assert data["appendix"] == ["bbq/X/bias_disambig"]
  for comparison in data["comparisons"]:
    for key, result in comparison["metrics"].items():
      if result["p_value"] is not None:
        assert result["p_adjusted"] >= result["p_value"], key
  assert list(data["models"]) == ["base", "human_like", "contrast"]
  undefined = data["models"]["base"]["results"]["bbq/undefined"]
  assert undefined["value"] is None and undefined["ci_low"] is None
  assert [(c["a"], c["b"]) for c in data["comparisons"]] == [
      ("base", "human_like"), ("base", "contrast"), ("contrast", "human_like")]
  first, last = (data["training"]["human_like"][k] for k in ("first", "last"))
  assert first["step"] == 1 and last["step"] == 20
  assert last["reward"] == pytest.approx(2.0)
  assert last["expression"] == pytest.approx((4.0 + 2.0) / 2)
  checks = data["training"]["human_like"]["heldout_checks"]
  np.testing.assert_allclose(
      [(c["step"], c["heldout"], c["heldout_lexical"], c["heldout_length"],
        c["heldout_repetition"]) for c in checks],
      [(0, 0.5, 1.0, 30.0, 0.02), (10, 0.6, 2.0, 40.0, 0.2),
       (20, 0.7, 3.0, 50.0, 0.4)])
  assert "| 10 | 0.6" in md.split("### human_like\n")[1]
  contrast = data["training"]["contrast"]
  assert contrast["heldout_checks"] == []
  assert contrast["first"]["kl"] is None
  assert contrast["first"]["expression"] == pytest.approx(0.4)
  assert contrast["last"]["expression"] == pytest.approx(0.2)

  assert sorted(data["figures"]) == [
      "figures/bbq.png", "figures/sycophancy.png", "figures/training.png",
      "figures/truthfulqa.png"]
  for relative in data["figures"]:
    path = out_dir / relative
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = mpl_image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels.std() > 0.01
  assert not [f for f in os.listdir(out_dir / "figures")
              if f.startswith(".tmp")]


def test_write_report_without_training(tmp_path):
  models, comparisons, _ = _synthetic(tmp_path)
  data = report.write_report(tmp_path / "out", models=models,
                             comparisons=comparisons[:1], title="Small")
  assert data["training"] == {}
  assert data["side_by_side"] == []
  assert "figures/training.png" not in data["figures"]
  md = (tmp_path / "out" / "report.md").read_text()
  assert md.startswith("# Small") and "## Training" not in md


def test_write_report_missing_training_log_leaves_nothing(tmp_path):
  models, comparisons, training = _synthetic(tmp_path)
  missing = str(tmp_path / "nowhere" / "metrics.jsonl")
  out_dir = tmp_path / "report"
  with pytest.raises(UserError, match="nowhere/metrics.jsonl"):
    report.write_report(out_dir, models=models, comparisons=comparisons,
                        training={**training, "contrast": missing})
  assert not (out_dir / "report.md").exists()


def test_write_report_failure_while_writing_leaves_nothing(tmp_path,
                                                           monkeypatch):
  models, comparisons, training = _synthetic(tmp_path)

  def fail(path, curves):
    raise RuntimeError("disk full")

  monkeypatch.setattr(report, "_plot_training", fail)
  out_dir = tmp_path / "report"
  with pytest.raises(RuntimeError, match="disk full"):
    report.write_report(out_dir, models=models, comparisons=comparisons,
                        training=training)
  assert not (out_dir / "report.md").exists()
  assert not os.path.exists(out_dir) or not any(
      files for _, _, files in os.walk(out_dir))


def test_write_report_unknown_model_in_comparison(tmp_path):
  models, comparisons, _ = _synthetic(tmp_path)
  with pytest.raises(UserError, match="'reverse'"):
    report.write_report(tmp_path / "out", models=models,
                        comparisons=[("base", "reverse", comparisons[0][2])])


def test_read_training_log_bad_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "reward": 0.1}\n{"reward": 0.2}\n')
  with pytest.raises(UserError, match="metrics.jsonl:2"):
    report.read_training_log(str(path))
  path.write_text('{"step": 2, "reward": 0.1}\n{"step": 1}\n'
                  '{"step": 2, "reward": 0.3}\n')
  rows = report.read_training_log(str(path))
  assert [r["step"] for r in rows] == [1, 2] and rows[1]["reward"] == 0.3


def test_figure_paths_are_unique():
  paths = report.figure_paths(["bbq", "a b", "a_b", "training"])
  assert paths == {"bbq": "figures/bbq.png", "a b": "figures/a_b.png",
                   "a_b": "figures/a_b_2.png",
                   "training": "figures/training_2.png"}


def test_judge_section_shows_the_calibration_when_scores_are_calibrated(
    tmp_path):
  models, comparisons, training = _synthetic(tmp_path)
  # A model whose expression scores were calibrated keeps the raw ones.
  models["base"]["results"]["expression/judge_raw"] = {
      "value": 0.5, "ci_low": 0.49, "ci_high": 0.51, "n": 32,
      "appendix": True}
  check = {"readout": "contrast", "mean_auroc": 0.8, "criteria": {
      "feelings": {"auroc": 0.8, "n_pairs": 24, "pair_accuracy": 0.875,
                   "mean_expressive": 0.53, "mean_flat": 0.505,
                   "calibration": {"slope": 15.653, "intercept": -0.86},
                   "calibrated_expressive": 0.636,
                   "calibrated_flat": 0.364}}}
  report.write_report(tmp_path / "report", models=models,
                      comparisons=comparisons, training=training,
                      judge_check=check)
  md = (tmp_path / "report" / "report.md").read_text()
  judge = md.split("\n## The judge")[1].split("\n## ")[0]
  assert ("| feelings | 24 | 0.800 | 0.875 | 0.530 | 0.505 | +0.025 | 15.65 "
          "| -0.86 | 0.636 | 0.364 |") in judge
  assert "Platt scaling" in judge and "expression/judge_raw" in judge
