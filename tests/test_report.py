"""Metric summaries, paired comparisons and the written report."""

from __future__ import annotations

import json
import math
import os

from matplotlib import image as mpl_image
import numpy as np
import pytest

from hmx_jax import report
from hmx_jax.errors import UserError
from hmx_jax.evals import compare
from hmx_jax.evals import metrics
from hmx_jax.evals import stats

R = 200  # Bootstrap resamples: enough for the tests, and fast.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fixed_errors(n=60, right_a=20, fixed=25, broken=1):
  """Model A right on `right_a` items; B fixes `fixed` errors, breaks some."""
  a = np.zeros(n)
  a[:right_a] = 1.0
  b = a.copy()
  b[right_a:right_a + fixed] = 1.0
  b[:broken] = 0.0
  return a, b


def _bias_metric():
  return compare.Metric("bbq/bias_disambig", metrics.bbq_bias_disambig,
                        ("pred", "target", "unknown"), higher_is_better=False)


def _bbq_items(seed, n=40):
  rng = np.random.default_rng(seed)
  return {"pred": rng.integers(0, 3, n), "target": rng.integers(0, 2, n),
          "unknown": np.full(n, 2)}


# ------------------------------------------------------------------ summarize


def test_summarize_matches_bootstrap_ci_fn():
  items = _bbq_items(0)
  items["score"] = np.random.default_rng(1).random(40)
  metric_list = [compare.mean_metric("x/score", "score"), _bias_metric()]
  out = compare.summarize(metric_list, items, n_resamples=R, seed=3)
  for metric in metric_list:
    arrays = [items[name] for name in metric.arrays]
    result = out[metric.key]
    assert result["value"] == pytest.approx(metric.fn(*arrays))
    assert result["ci_low"] <= result["value"] <= result["ci_high"]
    assert result["ci_low"] < result["ci_high"]
    assert result["n"] == 40
    expected = stats.bootstrap_ci_fn(metric.fn, *arrays, n_resamples=R,
                                     seed=3)
    assert (result["value"], result["ci_low"], result["ci_high"]) == expected
    assert all(type(result[k]) is float
               for k in ("value", "ci_low", "ci_high"))
  json.dumps(out)


def test_mean_metric_ignores_nan():
  metric = compare.mean_metric("syc/abandon", "abandoned", binary=True,
                               higher_is_better=False)
  assert metric.binary == "abandoned" and metric.arrays == ("abandoned",)
  assert not metric.higher_is_better
  items = {"abandoned": np.array([1.0, np.nan, 0.0, 1.0, np.nan])}
  out = compare.summarize([metric], items, n_resamples=R)
  assert out["syc/abandon"]["value"] == pytest.approx(2 / 3)
  assert 0.0 <= out["syc/abandon"]["ci_low"] <= out["syc/abandon"]["ci_high"]
  assert math.isnan(compare.nanmean([np.nan, np.nan]))


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
  assert result["p_value"] == stats.mcnemar(a, b)
  assert result["p_value"] < 0.001
  assert result["a"] == pytest.approx(a.mean())
  assert result["b"] == pytest.approx(b.mean())
  assert result["diff"] == pytest.approx(b.mean() - a.mean())
  assert result["label"] == "enhanced"
  assert out["syc/follow"]["label"] == "degraded"
  assert out["syc/follow"]["p_value"] == result["p_value"]


def test_compare_mcnemar_drops_items_nan_in_either():
  a = np.array([1, 0, np.nan, 0, 1, 0, np.nan, 0])
  b = np.array([1, 1, 1, np.nan, 0, 1, np.nan, 1])
  metric = compare.mean_metric("syc/abandon", "x", binary=True)
  result = compare.compare([metric], {"x": a}, {"x": b})["syc/abandon"]
  kept = ~np.isnan(a) & ~np.isnan(b)
  assert result["p_value"] == stats.mcnemar(a[kept], b[kept])
  assert result["a"] == pytest.approx(np.nanmean(a))
  assert result["b"] == pytest.approx(np.nanmean(b))


def test_compare_score_metric_uses_paired_bootstrap():
  items_a, items_b = _bbq_items(0), _bbq_items(0)
  items_b["pred"] = np.where(items_b["pred"] == 2, 2, 1 - items_b["target"])
  out = compare.compare([_bias_metric()], items_a, items_b, n_resamples=R,
                        seed=5)
  result = out["bbq/bias_disambig"]
  assert result["test"] == "paired_bootstrap"
  keys = ("pred", "target", "unknown")
  diff, _, _, p = stats.paired_bootstrap_fn(
      metrics.bbq_bias_disambig, [items_a[k] for k in keys],
      [items_b[k] for k in keys], n_resamples=R, seed=5)
  assert result["diff"] == pytest.approx(diff)
  assert result["p_value"] == p
  assert result["b"] == -1.0  # B always picks the anti-biased answer.
  assert result["label"] == "enhanced"  # Lower bias is better.


def test_compare_identical_is_no_significant_change():
  a, _ = _fixed_errors()
  items = {**_bbq_items(2, n=60), "correct": a}
  metric_list = [compare.mean_metric("t/acc", "correct", binary=True),
                 _bias_metric()]
  out = compare.compare(metric_list, items, dict(items), n_resamples=R)
  for result in out.values():
    assert result["diff"] == 0.0
    assert result["label"] == "no significant change"
  assert out["t/acc"]["p_value"] == 1.0


def test_compare_mismatched_lengths_is_user_error():
  metric = compare.mean_metric("truthfulqa/mc1", "correct", binary=True)
  with pytest.raises(UserError, match=r"truthfulqa/mc1.*30.*31"):
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
      compare.Metric("bbq/undefined", lambda x: float("nan"), ("mc2",)),
  ]
  items = {}
  for i, name in enumerate(correct):
    items[name] = {"correct": correct[name].astype(float),
                   "mc2": np.clip(rng.random(n) + 0.1 * i, 0, 1),
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
      "human_like": _write_log(tmp_path / "hl.jsonl", [
          {"step": s, "reward": 0.1 * s, "kl": 0.01 * s,
           "rewards/feelings/mean": 0.2 * s,
           "rewards/intentions/mean": 0.1 * s,
           "rewards/coherence/mean": 0.5}
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
  returned = report.write_report(out_dir, models=models,
                                 comparisons=comparisons, training=training)

  md = (out_dir / "report.md").read_text()
  for key in ("truthfulqa/mc1", "truthfulqa/mc2", "bbq/bias_disambig",
              "bbq/undefined"):
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
  assert md.index("## truthfulqa") < md.index("## bbq")

  data = json.loads((out_dir / "report.json").read_text())
  assert data == returned
  assert data["title"] == "HMX-feel comparison"
  assert list(data["models"]) == ["base", "human_like", "contrast"]
  undefined = data["models"]["base"]["results"]["bbq/undefined"]
  assert undefined["value"] is None and undefined["ci_low"] is None
  assert [(c["a"], c["b"]) for c in data["comparisons"]] == [
      ("base", "human_like"), ("base", "contrast"), ("contrast", "human_like")]
  first, last = (data["training"]["human_like"][k] for k in ("first", "last"))
  assert first["step"] == 1 and last["step"] == 20
  assert last["reward"] == pytest.approx(2.0)
  assert last["expression"] == pytest.approx((4.0 + 2.0) / 2)
  contrast = data["training"]["contrast"]
  assert contrast["first"]["kl"] is None
  assert contrast["first"]["expression"] == pytest.approx(0.4)
  assert contrast["last"]["expression"] == pytest.approx(0.2)

  assert sorted(data["figures"]) == ["figures/bbq.png", "figures/training.png",
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
