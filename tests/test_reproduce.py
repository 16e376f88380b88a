"""`hmx-feel eval` and `hmx-feel reproduce` end to end on a tiny model, and
their errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hmx_jax import config_lib
from hmx_jax.evals import bbq, compare, sycophancy

from helpers import tiny_smol_model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "smollm2_135m.py")
DATA_DIR = os.environ.get("HMX_DATA_DIR",
                          os.path.join(ROOT, "..", "shared", "data"))
TINY = ["--config.train.progress=false", "--config.eval.truthfulqa.limit=3",
        "--config.eval.bbq.limit=1", "--config.eval.sycophancy.limit=3",
        "--config.eval.sycophancy.opinion_limit=3",
        "--config.eval.expression.limit=3",
        "--config.eval.expression.max_new_tokens=6",
        "--config.eval.n_resamples=50", "--config.sampling.max_new_tokens=6"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
  return tiny_smol_model_dir(tmp_path_factory.mktemp("tiny_smol"))


def cli(command, workdir, *args, data_dir=DATA_DIR):
  return subprocess.run(
      [sys.executable, "-m", "hmx_jax.cli", command, "--config",
       f"{CONFIG}:smoke", "--workdir", str(workdir), *TINY,
       f"--config.eval.data_dir={data_dir}", *args],
      capture_output=True, text=True, timeout=900)


def test_reproduce_end_to_end_and_rerun_skips(tmp_path, tiny_model_dir):
  workdir = tmp_path / "exp"
  proc = cli("reproduce", workdir, f"--config.model.spec={tiny_model_dir}")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  for name in ("base", "human_like", "contrast"):
    results = json.loads((workdir / "eval" / name / "results.json")
                         .read_text())
    for key in ("truthfulqa/mc1", "truthfulqa/mc2", "bbq/acc_ambig",
                "bbq/acc_disambig", "bbq/bias_ambig", "bbq/bias_disambig",
                "sycophancy/abandon_rate", "sycophancy/opinion_match",
                "expression/judge", "expression/lexical"):
      assert key in results["metrics"], key
      assert set(results["metrics"][key]) >= {"value", "ci_low", "ci_high"}
  report = (workdir / "report.md").read_text()
  for fragment in ("truthfulqa/mc1", "human_like", "contrast",
                   "figures/training.png"):
    assert fragment in report
  data = json.loads((workdir / "report.json").read_text())
  assert len(data["comparisons"]) == 3
  for figure in data["figures"]:
    assert (workdir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  trained = json.loads((workdir / "train" / "contrast" / "config.json")
                       .read_text())
  assert trained["reward"]["direction"] == "reverse"

  # A rerun finds every stage done: nothing is trained or evaluated again.
  before = (workdir / "eval" / "base" / "results.json").stat().st_mtime_ns
  proc = cli("reproduce", workdir, f"--config.model.spec={tiny_model_dir}")
  assert proc.returncode == 0, proc.stderr
  assert "== eval base: done" in proc.stdout
  assert "== train human_like: done" in proc.stdout
  assert "== train contrast: done" in proc.stdout
  after = (workdir / "eval" / "base" / "results.json").stat().st_mtime_ns
  assert before == after


def test_eval_of_a_checkpoint_and_unknown_step(tmp_path, tiny_model_dir):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "hmx_jax.cli", "train", "--config",
       f"{CONFIG}:smoke", "--workdir", str(workdir), *TINY,
       f"--config.model.spec={tiny_model_dir}"],
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  proc = cli("eval", workdir, f"--config.model.spec={tiny_model_dir}",
             "--config.eval.evals=('truthfulqa',)")
  assert proc.returncode == 0, proc.stderr
  assert (workdir / "eval" / "step_2" / "results.json").exists()
  proc = cli("eval", workdir, f"--config.model.spec={tiny_model_dir}",
             "--step", "7")
  assert proc.returncode == 2
  assert "no checkpoint for step 7; available: 1, 2" in proc.stderr


def one_error_line(proc):
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if "error" in l.lower()]
  assert len(errors) == 1, proc.stderr
  return errors[0]


def test_missing_dataset_names_it_and_where_to_get_it(tmp_path):
  workdir = tmp_path / "exp"
  proc = cli("reproduce", workdir, data_dir=str(tmp_path / "nowhere"))
  line = one_error_line(proc)
  assert "truthfulqa" in line and "github.com/sylinrl/TruthfulQA" in line
  assert not workdir.exists()
  # Only BBQ absent: named as such.
  data = tmp_path / "data"
  shutil.copytree(DATA_DIR, data)
  shutil.rmtree(data / "bbq")
  proc = cli("eval", workdir, "--base", data_dir=str(data))
  line = one_error_line(proc)
  assert "bbq" in line and "github.com/nyu-mll/BBQ" in line
  assert not workdir.exists()


def test_malformed_row_gives_file_and_line(tmp_path):
  data = tmp_path / "data"
  shutil.copytree(DATA_DIR, data)
  path = data / "bbq" / "Age.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  lines[0] = '{"example_id": 0, "broken\n'
  path.write_text("".join(lines))
  workdir = tmp_path / "exp"
  proc = cli("reproduce", workdir, data_dir=str(data))
  line = one_error_line(proc)
  assert f"{path}:1" in line
  assert not workdir.exists()


def test_bbq_metric_defs_equal_hand_computed_values():
  # Ambiguous items (label = unknown = 2); disambiguated (label 0 or 1).
  items = {
      "bbq/pred": np.array([0, 2, 1, 0, 0, 1, 2, 0]),
      "bbq/label": np.array([2, 2, 2, 2, 0, 1, 0, 1]),
      "bbq/target": np.array([0, 0, 1, -1, 0, 0, 1, 1]),
      "bbq/unknown": np.array([2, 2, 2, 2, 2, 2, 2, 2]),
      "bbq/ambiguous": np.array([1, 1, 1, 1, 0, 0, 0, 0], bool),
      "bbq/category": np.array(["Age"] * 4 + ["Religion"] * 4),
  }
  correct = (items["bbq/pred"] == items["bbq/label"]).astype(float)
  items["bbq/correct_ambig"] = np.where(items["bbq/ambiguous"], correct,
                                        np.nan)
  items["bbq/correct_disambig"] = np.where(~items["bbq/ambiguous"], correct,
                                           np.nan)
  got = compare.summarize(bbq.metric_defs(["Age", "Religion"]), items,
                          n_resamples=20)
  # Ambiguous: 1 of 4 right. Targeted non-unknown answers: item 0 (pred 0 =
  # target 0, biased) and item 2 (pred 1 = target 1, biased); item 3 has no
  # target. s_DIS-ratio = 2*2/2 - 1 = 1; s_AMB = (1 - 1/4) * 1 = 0.75.
  assert got["bbq/acc_ambig"]["value"] == pytest.approx(0.25)
  assert got["bbq/bias_ambig"]["value"] == pytest.approx(0.75)
  # Disambiguated: items 4, 5 right; 6 says unknown; 7 wrong.
  # Non-unknown with target: 4 (0 = target, biased), 5 (1 != 0), 7 (0 != 1).
  # s_DIS = 2 * 1/3 - 1 = -1/3.
  assert got["bbq/acc_disambig"]["value"] == pytest.approx(0.5)
  assert got["bbq/bias_disambig"]["value"] == pytest.approx(-1 / 3)
  assert got["bbq/Age/acc_ambig"]["value"] == pytest.approx(0.25)
  assert got["bbq/Religion/bias_disambig"]["value"] == pytest.approx(-1 / 3)
  assert np.isnan(got["bbq/Age/acc_disambig"]["value"])


def test_sycophancy_metric_defs_equal_hand_computed_values():
  P = "sycophancy/"
  before = np.array([1, 1, 0, 1, 0.])
  after = np.array([0, 1, 1, 1, 0.])
  items = {
      P + "correct_before": before, P + "correct_after": after,
      P + "abandoned": np.where(before == 1, 1 - after, np.nan),
      P + "changed": np.array([1, 0, 1, 0, 0.]),
      P + "correct_suggested": np.array([0, 1, 0, 0, 0.]),
      P + "followed": np.array([1, 0, 0, 1, 1.]),
      P + "matched": np.array([1, 1, 0, 1.]),
  }
  got = compare.summarize(sycophancy.METRICS, items, n_resamples=20)
  assert got[P + "acc_before"]["value"] == pytest.approx(0.6)
  assert got[P + "acc_after"]["value"] == pytest.approx(0.6)
  assert got[P + "abandon_rate"]["value"] == pytest.approx(1 / 3)
  assert got[P + "suggested_drop"]["value"] == pytest.approx(0.6 - 0.2)
  assert got[P + "follow_rate"]["value"] == pytest.approx(0.6)
  assert got[P + "opinion_match"]["value"] == pytest.approx(0.75)


def test_cpu_preset_eval_settings_are_valid():
  from hmx_jax.evals import suite
  c = config_lib.load_config(f"{CONFIG}:cpu")
  suite.validate(c)
  with c.unlocked():
    c.eval.evals = ("truthfulqa", "mmlu")
  with pytest.raises(Exception, match="mmlu"):
    suite.validate(c)
