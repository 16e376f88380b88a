"""The judge check: AUROC, the labelled file's validation and integrity, and
`evaluate` and `hmx-feel judge-check` on a tiny random model."""

import collections
import functools
import json
import pathlib
import re

import numpy as np
import pytest

from hmx_jax import cli, models
from hmx_jax.errors import UserError
from hmx_jax.evals import common, judge_check

CRITERIA = ("feelings", "intentions", "self_awareness")
GOOD = {"id": "feelings-01", "criterion": "feelings",
        "messages": [{"role": "user", "content": "How was your day?"}],
        "expressive": "I feel happy today.", "flat": "The day was calm."}


@pytest.mark.parametrize("positive, negative, expected", [
    ([3, 4], [1, 2], 1.0),  # Perfect.
    ([1, 2], [3, 4], 0.0),  # Inverted.
    ([1, 3], [2], 0.5),
    ([2, 2], [2, 1], 0.75),  # (2,2) ties 1/2 twice, (2,1) wins twice: 3/4.
    ([5, 5], [5, 5, 5], 0.5),  # All ties.
    # 0.1 beats 0.05 (1); 0.4 beats 0.05, 0.35 (2); 0.35 beats 0.05 and ties
    # 0.35 (1.5); 0.8 beats all three (3): 7.5 of 12.
    ([0.1, 0.4, 0.35, 0.8], [0.05, 0.35, 0.5], 7.5 / 12),
])
def test_auroc_hand_computed(positive, negative, expected):
  assert judge_check.auroc(positive, negative) == pytest.approx(expected)
  assert judge_check.auroc(negative, positive) == pytest.approx(1 - expected)


def test_auroc_rejects_empty_and_nan():
  with pytest.raises(ValueError, match="positives and negatives"):
    judge_check.auroc([], [1.0])
  with pytest.raises(ValueError, match="NaN"):
    judge_check.auroc([float("nan")], [1.0])


def _write(tmp_path, lines):
  path = tmp_path / "check.jsonl"
  path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l)
                            for l in lines) + "\n", encoding="utf-8")
  return path


@pytest.mark.parametrize("bad, message", [
    ("{not json", "invalid JSON"),
    ({k: v for k, v in GOOD.items() if k != "flat"}, "missing key(s) flat"),
    ({**GOOD, "criterion": "happiness"}, "unknown criterion 'happiness'"),
    ({**GOOD, "criterion": "coherence"},
     "not an expression criterion 'coherence'"),
    ({**GOOD, "expressive": "  "}, "'expressive' must be a non-empty string"),
    ({**GOOD, "extra": 1}, "unexpected key(s) extra"),
    ({**GOOD, "messages": [{"role": "assistant", "content": "Hi"}]},
     "last message must be a user turn"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
  path = _write(tmp_path, [{**GOOD, "id": "ok-1"}, "", bad])
  with pytest.raises(UserError) as info:
    judge_check.load_pairs(path)
  assert str(info.value).startswith(f"{path}:3: ")
  assert message in str(info.value)


def test_bad_files(tmp_path):
  with pytest.raises(UserError, match="not found"):
    judge_check.load_pairs(tmp_path / "missing.jsonl")
  with pytest.raises(UserError, match="holds no pairs"):
    judge_check.load_pairs(_write(tmp_path, [""]))
  with pytest.raises(UserError, match=r":2: duplicate id 'feelings-01'"):
    judge_check.load_pairs(_write(tmp_path, [GOOD, GOOD]))


def test_shipped_file_integrity():
  pairs = judge_check.load_pairs()
  counts = collections.Counter(p.criterion for p in pairs)
  assert set(counts) == set(CRITERIA)
  assert all(n >= 24 for n in counts.values()), counts
  assert len({p.id for p in pairs}) == len(pairs)
  for p in pairs:
    assert p.id.startswith(p.criterion + "-"), p.id
    assert p.expressive.strip() != p.flat.strip(), p.id
    expressive, flat = len(p.expressive.split()), len(p.flat.split())
    # Similar lengths, so that length does not decide.
    assert abs(expressive - flat) <= 0.3 * max(expressive, flat), p.id
    assert 5 <= min(expressive, flat) and max(expressive, flat) <= 80, p.id
    if "-narrative-" in p.id:
      # The flat answer narrates in the first person: talking about oneself
      # without the criterion (see the module docstring).
      assert re.search(r"\bI\b", p.flat), p.id  # "I", "I've", "I'm"


def test_shipped_pairs_do_not_reuse_held_out_prompts():
  """The evaluation's prompts stay unseen by the calibration."""
  held_out = pathlib.Path(judge_check.__file__).parent.parent / "data" / (
      "prompts/heldout.jsonl")
  prompts = {json.loads(line)["messages"][-1]["content"].strip().lower()
             for line in held_out.read_text().splitlines() if line.strip()}
  assert len(prompts) >= 100
  for p in judge_check.load_pairs():
    assert p.messages[-1]["content"].strip().lower() not in prompts, p.id


def _sigmoid(x):
  return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def test_calibration_of_two_score_values_by_hand():
  # Scores at logit +1 (3 expressive, 1 flat) and -1 (1 expressive, 3
  # flat); Platt's targets 5/6 and 1/6. Two parameters for two distinct
  # scores: the fit gives each score its mean target, (3*5/6 + 1/6)/4 = 2/3
  # at +1 and 1/3 at -1, so slope + intercept = log 2 = -(-slope +
  # intercept): slope log 2, intercept 0.
  high, low = _sigmoid(1.0), _sigmoid(-1.0)
  fit = judge_check.fit_calibration([high, high, high, low],
                                    [high, low, low, low])
  assert fit["slope"] == pytest.approx(np.log(2), abs=1e-9)
  assert fit["intercept"] == pytest.approx(0.0, abs=1e-9)
  np.testing.assert_allclose(judge_check.calibrate([high, low], fit),
                             [2 / 3, 1 / 3], atol=1e-9)


def test_calibration_solves_the_likelihood_equations():
  rng = np.random.default_rng(0)
  positive = _sigmoid(rng.normal(0.08, 0.05, 24))
  negative = _sigmoid(rng.normal(0.0, 0.05, 30))
  fit = judge_check.fit_calibration(positive, negative)
  # The maximum-likelihood equations of logistic regression on x =
  # logit(score) with Platt's targets t: sum(t - p) = 0, sum(x (t - p)) = 0.
  x = np.log(np.concatenate([positive, negative])
             / (1 - np.concatenate([positive, negative])))
  t = np.concatenate([np.full(24, 25 / 26), np.full(30, 1 / 32)])
  p = _sigmoid(fit["slope"] * x + fit["intercept"])
  assert abs(np.sum(t - p)) < 1e-8 and abs(np.sum(x * (t - p))) < 1e-8
  # A narrow readout spreads out: raw means differ by ~0.02, calibrated
  # ones by far more, and the order of the answers is kept.
  calibrated_pos = judge_check.calibrate(positive, fit)
  calibrated_neg = judge_check.calibrate(negative, fit)
  assert (calibrated_pos.mean() - calibrated_neg.mean()
          > 5 * (positive.mean() - negative.mean()))
  assert judge_check.auroc(calibrated_pos, calibrated_neg) == pytest.approx(
      judge_check.auroc(positive, negative))


def test_calibration_stays_finite_when_the_scores_separate():
  fit = judge_check.fit_calibration([0.6, 0.7], [0.3, 0.4])
  assert np.isfinite(fit["slope"]) and fit["slope"] > 0
  # Symmetric scores: intercept 0, and the likelihood equation
  # sum(x (t - p)) = 0 with Platt's targets 3/4 and 1/4 holds.
  assert fit["intercept"] == pytest.approx(0.0, abs=1e-9)
  x = np.log(np.array([0.6, 0.7, 0.3, 0.4]) / np.array([0.4, 0.3, 0.7, 0.6]))
  t = np.array([0.75, 0.75, 0.25, 0.25])
  assert abs(np.sum(x * (t - _sigmoid(fit["slope"] * x)))) < 1e-9
  with pytest.raises(ValueError, match="positives and negatives"):
    judge_check.fit_calibration([], [0.5])


@pytest.fixture(scope="module")
def tiny_judge():
  config, params, tokenizer = models.load_model("tiny-qwen3")
  return common.EvalModel(config, params, tokenizer, name="tiny-qwen3")


def test_evaluate_on_a_tiny_model(tiny_judge):
  results = judge_check.evaluate(tiny_judge, batch_size=4, limit=2)
  assert set(results) == set(CRITERIA) | {"mean_auroc"}
  for name in CRITERIA:
    r = results[name]
    assert r["n_pairs"] == 2 and len(r["pairs"]) == 2
    assert 0.0 <= r["auroc"] <= 1.0
    assert 0.0 <= r["pair_accuracy"] <= 1.0
    assert 0.0 <= r["mean_expressive"] <= 1.0
    assert 0.0 <= r["mean_flat"] <= 1.0
    assert [p["id"] for p in r["pairs"]] == [f"{name}-01", f"{name}-02"]
    pair_accuracy = sum(p["expressive"] > p["flat"] for p in r["pairs"]) / 2
    assert r["pair_accuracy"] == pair_accuracy
    expressive = [p["expressive"] for p in r["pairs"]]
    flat = [p["flat"] for p in r["pairs"]]
    fit = r["calibration"]
    assert r["calibrated_expressive"] == pytest.approx(np.mean(
        _sigmoid(fit["slope"] * np.log(np.divide(expressive, 1 - np.array(
            expressive))) + fit["intercept"])))
    assert 0.0 < r["calibrated_flat"] < 1.0
  assert results["mean_auroc"] == pytest.approx(
      sum(results[c]["auroc"] for c in CRITERIA) / 3)
  with pytest.raises(UserError, match="'coherence' is not an expression"):
    judge_check.evaluate(tiny_judge, criteria=("coherence",))


def test_cli_prints_a_table_and_writes_json(tmp_path, monkeypatch, capsys):
  # One pair per criterion keeps the command a few seconds long.
  monkeypatch.setattr(judge_check, "evaluate",
                      functools.partial(judge_check.evaluate, limit=1))
  out = tmp_path / "check.json"
  assert cli.main(["judge-check", "--model", "tiny-qwen3", "--json",
                   str(out), "--batch-size", "2"]) == 0
  stdout = capsys.readouterr().out
  for name in CRITERIA + ("mean",):
    assert any(line.startswith(name) for line in stdout.splitlines()), stdout
  written = json.loads(out.read_text())
  assert written["model"] == "tiny-qwen3"
  assert all(written[c]["n_pairs"] == 1 for c in CRITERIA)
  assert cli.main(["judge-check", "--model", "tiny-qwen3",
                   "--batch-size", "0"]) == cli.EXIT_USAGE


def test_saved_checks_and_expression_items_follow_the_criteria_wording(
    tmp_path, monkeypatch):
  """A judge check saved under other criterion wording is not reused, and
  the expression evaluation's key changes with the wording."""
  import dataclasses
  from hmx_jax import base_config, rubric_text
  from hmx_jax.evals import suite
  c = base_config.get_config("smollm2-135m-instruct")
  spec = c.model.spec
  path = tmp_path / "judge_check.json"
  path.write_text(json.dumps({"key": suite.judge_check_key(c, spec)}))
  assert suite.saved_judge_check(c, spec, path) is not None
  expression_key = suite.eval_key(c, "expression", {}, {})
  reworded = tuple(
      dataclasses.replace(k, withhold=(k.withhold[0] + " Be brief.",))
      if k.name == "self_awareness" else k for k in rubric_text._CRITERIA)
  monkeypatch.setattr(rubric_text, "_CRITERIA", reworded)
  assert suite.saved_judge_check(c, spec, path) is None
  changed = suite.eval_key(c, "expression", {}, {})
  assert [k for k in changed if changed[k] != expression_key[k]] == ["rubric"]
