"""`hmx-feel eval` and `hmx-feel reproduce` end to end on a tiny model, and
their errors and faults."""

import collections
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hmx_jax import config_lib, report
from hmx_jax.evals import judge_check

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
# Five steps, a checkpoint every two, TruthfulQA only: the fault tests.
FIVE_STEPS = ["--config.train.num_steps=5", "--config.train.checkpoint_every=2",
              "--config.eval.evals=('truthfulqa',)"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
  return tiny_smol_model_dir(tmp_path_factory.mktemp("tiny_smol"))


def command(name, workdir, *args, data_dir=DATA_DIR):
  return [sys.executable, "-m", "hmx_jax.cli", name, "--config",
          f"{CONFIG}:smoke", "--workdir", str(workdir), *TINY,
          f"--config.eval.data_dir={data_dir}", *args]


def cli(name, workdir, *args, data_dir=DATA_DIR):
  return subprocess.run(command(name, workdir, *args, data_dir=data_dir),
                        capture_output=True, text=True, timeout=900)


def test_reproduce_end_to_end_and_rerun_skips(tmp_path, tiny_model_dir):
  workdir = tmp_path / "exp"
  # As the cpu preset: calibrated expression scores.
  calibrated = ["--config.eval.expression.calibrate=true"]
  proc = cli("reproduce", workdir, f"--config.model.spec={tiny_model_dir}",
             *calibrated)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  for name in ("base", "human_like", "contrast", "contrast_pref"):
    results = json.loads((workdir / "eval" / name / "results.json")
                         .read_text())
    for key in ("truthfulqa/mc1", "truthfulqa/mc2", "bbq/acc_ambig",
                "bbq/acc_disambig", "bbq/bias_ambig", "bbq/bias_disambig",
                "sycophancy/abandon_rate", "sycophancy/opinion_match",
                "expression/judge", "expression/lexical"):
      assert key in results["metrics"], key
      assert set(results["metrics"][key]) >= {"value", "ci_low", "ci_high"}
    assert set(results["evaluations"]) == {"truthfulqa", "bbq", "sycophancy",
                                           "expression"}
  report_md = (workdir / "report.md").read_text()
  for fragment in ("truthfulqa/mc1", "human_like", "contrast",
                   "contrast_pref vs base", "Holm",
                   "figures/training.png", "## Appendix"):
    assert fragment in report_md
  data = json.loads((workdir / "report.json").read_text())
  assert [(c["a"], c["b"]) for c in data["comparisons"]] == [
      ("base", "human_like"), ("base", "contrast"), ("base", "contrast_pref"),
      ("contrast", "human_like")]
  for figure in data["figures"]:
    assert (workdir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  trained = json.loads((workdir / "train" / "contrast" / "config.json")
                       .read_text())
  assert trained["reward"]["direction"] == "reverse"
  assert trained["objective"] == "grpo"
  pref = json.loads((workdir / "train" / "contrast_pref" / "config.json")
                    .read_text())
  assert (pref["objective"], pref["reward"]["direction"]) == (
      "contrastive", "reverse")
  assert "contrast_pref" in data["training"]
  # The smoke preset's four held-out prompts, each model's answer as the
  # expression evaluation saved it.
  saved = {name: [json.loads(l) for l in
                  (workdir / "eval" / name / "answers.jsonl").open()]
           for name in ("base", "human_like", "contrast", "contrast_pref")}
  side = data["side_by_side"]
  assert [r["id"] for r in side] == [r["id"] for r in saved["base"]][:4]
  for row, i in zip(side, range(4)):
    assert row["answers"] == {name: records[i]["answer"]
                              for name, records in saved.items()}
  assert "## Answers side by side" in report_md
  # The frozen judge on the labelled check set: every pair of each
  # expression criterion, in the report.
  check = json.loads((workdir / "eval" / "judge_check.json").read_text())
  assert check["readout"] == "rubric"
  shipped = collections.Counter(
      json.loads(line)["criterion"] for line in (
          pathlib.Path(judge_check.__file__).parent.parent / "data"
          / "judge_check.jsonl").read_text().splitlines() if line.strip())
  assert {name: r["n_pairs"] for name, r in check["criteria"].items()} == (
      dict(shipped))
  assert data["judge_check"] == check
  assert "## The judge" in report_md
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
  # Each expression score is the check's calibration of the raw score:
  # sigmoid(slope * logit(raw) + intercept), per criterion.
  for name, records in saved.items():
    for record in records:
      for criterion, raw in record["judge_raw"].items():
        fit = check["criteria"][criterion]["calibration"]
        z = fit["slope"] * np.log(raw / (1 - raw)) + fit["intercept"]
        assert record[criterion] == pytest.approx(1 / (1 + np.exp(-z)),
                                                  rel=1e-5), (name, criterion)
    results = json.loads((workdir / "eval" / name / "results.json")
                         .read_text())
    assert results["evaluations"]["expression"]["calibration"] == {
        k: r["calibration"] for k, r in check["criteria"].items()}
    assert "expression/judge_raw" in results["metrics"]
    # Repetition: the share of each answer's token 4-grams (transformers'
    # tokenizer of the model directory) that repeat an earlier one.
    with np.load(workdir / "eval" / name / "items" / "expression.npz") as f:
      repetition = f["expression|repetition"]
    for record, value in zip(records, repetition):
      ids = tokenizer.encode(record["answer"], add_special_tokens=False)
      grams = [tuple(ids[i:i + 4]) for i in range(len(ids) - 3)]
      expected = 1 - len(set(grams)) / len(grams) if grams else 0.0
      assert value == pytest.approx(expected), record["answer"]
  assert "calibrated expressive" in report_md

  # A rerun finds every stage done: nothing is trained or evaluated again.
  before = (workdir / "eval" / "base" / "results.json").stat().st_mtime_ns
  proc = cli("reproduce", workdir, f"--config.model.spec={tiny_model_dir}",
             *calibrated)
  assert proc.returncode == 0, proc.stderr
  assert "== eval base: done" in proc.stdout
  assert "== train human_like: done" in proc.stdout
  assert "== train contrast: done" in proc.stdout
  assert "== train contrast_pref: done" in proc.stdout
  assert "== judge check: done" in proc.stdout
  after = (workdir / "eval" / "base" / "results.json").stat().st_mtime_ns
  assert before == after


@pytest.mark.slow  # 50 s
def test_changed_limit_recomputes_and_results_say_which(tmp_path,
                                                        tiny_model_dir):
  workdir = tmp_path / "run"
  items = workdir / "eval" / "base" / "items" / "truthfulqa.npz"
  results_path = workdir / "eval" / "base" / "results.json"
  only_tqa = ["--base", f"--config.model.spec={tiny_model_dir}",
              "--config.eval.evals=('truthfulqa',)"]
  scored = []
  for limit in (4, 6, 6):
    proc = cli("eval", workdir, *only_tqa,
               f"--config.eval.truthfulqa.limit={limit}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(items) as f:
      scored.append(len(f["truthfulqa|mc1"]))
    results = json.loads(results_path.read_text())
    produced = results["evaluations"]["truthfulqa"]
    assert produced["config"]["eval.truthfulqa"] == {"limit": limit}
    assert produced["model"]["spec"] == tiny_model_dir
    assert produced["data"].keys() == {"truthfulqa/mc_task.json"}
    assert results["metrics"]["truthfulqa/mc1"]["n"] == limit
    if limit == 6 and len(scored) == 2:
      assert ("truthfulqa: recomputing, the saved items do not match "
              "(config.eval.truthfulqa.limit was 4, now 6)") in proc.stdout
  # Limit 4, then 6 (recomputed), then 6 again (reused, nothing said).
  assert scored == [4, 6, 6]
  assert "recomputing" not in proc.stdout


def test_eval_of_a_checkpoint_reads_the_model_from_the_workdir(
    tmp_path, tiny_model_dir):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "hmx_jax.cli", "train", "--config",
       f"{CONFIG}:smoke", "--workdir", str(workdir), *TINY,
       f"--config.model.spec={tiny_model_dir}"],
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  # No --config.model.spec: the config names SmolLM2-135M, the workdir's
  # config.json the tiny model its checkpoints fit.
  proc = cli("eval", workdir, "--config.eval.evals=('truthfulqa',)")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (f"model.spec {tiny_model_dir!r} from {workdir}/config.json (not "
          "the --config's 'smollm2-135m-instruct')") in proc.stdout
  results = json.loads((workdir / "eval" / "step_2" / "results.json")
                       .read_text())
  assert results["evaluations"]["truthfulqa"]["model"]["spec"] == \
      tiny_model_dir
  assert results["evaluations"]["truthfulqa"]["model"]["step"] == 2
  proc = cli("eval", workdir, "--step", "7")
  assert proc.returncode == 2
  assert "no checkpoint for step 7; available: 1, 2" in proc.stderr


def _start(workdir, *args):
  log = open(pathlib.Path(workdir).parent / f"{workdir.name}.log", "w+")
  proc = subprocess.Popen(command("reproduce", workdir, *args), stdout=log,
                          stderr=subprocess.STDOUT, text=True)
  return proc, log


def _output(log) -> str:
  log.seek(0)
  return log.read()


def _rows(path) -> int:
  return sum(1 for line in open(path) if line.strip()) if path.exists() else 0


def _checkpoint_steps(run_dir) -> list[int]:
  folder = run_dir / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit()) if folder.is_dir() else []


def _run_until(workdir, args, condition, action, timeout=600):
  """Starts reproduce, waits for condition(), then action(proc)."""
  proc, log = _start(workdir, *args)
  deadline = time.time() + timeout
  while not condition(_output(log)):
    assert proc.poll() is None, "ended early:\n" + _output(log)
    assert time.time() < deadline, _output(log)
    time.sleep(0.02)
  action(proc)
  proc.wait(timeout=timeout)
  text = _output(log)
  log.close()
  return proc.returncode, text


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
  workdir = tmp_path_factory.mktemp("uninterrupted") / "exp"
  proc = cli("reproduce", workdir, f"--config.model.spec={tiny_model_dir}",
             *FIVE_STEPS)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return workdir


def _curves(workdir):
  return {name: [{k: row.get(k) for k in ("step", "reward", "kl")} |
                 {"expression": report.expression_score(row)}
                 for row in report.read_training_log(
                     str(workdir / "train" / name / "metrics.jsonl"))]
          for name in ("human_like", "contrast", "contrast_pref")}


@pytest.mark.slow  # two whole experiments, one interrupted three ways
def test_reproduce_survives_sigterm_and_kill(tmp_path, tiny_model_dir,
                                             uninterrupted):
  workdir = tmp_path / "exp"
  args = (f"--config.model.spec={tiny_model_dir}", *FIVE_STEPS)
  train = workdir / "train"

  # 1. SIGTERM during the base model's evaluation: exit 0, nothing of that
  # evaluation on disk, not even a temporary.
  code, out = _run_until(workdir, args, lambda out: "== eval base" in out,
                         lambda p: p.send_signal(signal.SIGTERM))
  assert code == 0, out
  assert "SIGTERM during eval base: stopped" in out, out
  assert "rerun the same command to resume" in out
  assert not (workdir / "eval" / "base" / "results.json").exists()
  assert not list(workdir.rglob("*.tmp"))

  # 2. SIGTERM during the human-like training: it saves, exit 0.
  code, out = _run_until(
      workdir, args,
      lambda out: _rows(train / "human_like" / "metrics.jsonl") >= 1,
      lambda p: p.send_signal(signal.SIGTERM))
  assert code == 0, out
  assert "== eval base" in out and "SIGTERM" in out, out
  assert "rerun the same command to resume" in out
  assert not (workdir / "eval" / "human_like").exists()
  saved = _checkpoint_steps(train / "human_like")
  assert saved and saved[-1] < 5

  # 3. kill -9 in the contrast training after its third step, before the
  # fourth's checkpoint: step 3 is logged but not saved.
  def after_step_3(out):
    run = train / "contrast"
    logged = _rows(run / "metrics.jsonl")
    return logged >= 3 and logged > max(_checkpoint_steps(run), default=0)
  code, out = _run_until(workdir, args, after_step_3, lambda p: p.kill())
  assert code == -signal.SIGKILL
  assert "== train human_like: done" not in out   # It was resumed instead.
  assert _rows(train / "contrast" / "metrics.jsonl") > max(
      _checkpoint_steps(train / "contrast"))

  # 4. The rerun finishes the experiment.
  proc = cli("reproduce", workdir, *args)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (workdir / "report.md").exists()
  for name in ("human_like", "contrast", "contrast_pref"):
    steps = [json.loads(line)["step"] for line in
             open(train / name / "metrics.jsonl") if line.strip()]
    assert steps == [1, 2, 3, 4, 5], (name, steps)
    samples = [json.loads(line)["step"] for line in
               open(train / name / "samples.jsonl") if line.strip()]
    reference = [json.loads(line)["step"] for line in open(
        uninterrupted / "train" / name / "samples.jsonl") if line.strip()]
    assert samples == reference, name
  # The same curves, and the same trained models, as without faults.
  assert _curves(workdir) == _curves(uninterrupted)
  for name in ("base", "human_like", "contrast", "contrast_pref"):
    ours, theirs = (json.loads((w / "eval" / name / "results.json")
                               .read_text())
                    for w in (workdir, uninterrupted))
    assert ours["metrics"] == theirs["metrics"], name
    # Bit for bit the same params.
    assert (ours["evaluations"]["truthfulqa"]["model"] ==
            theirs["evaluations"]["truthfulqa"]["model"]), name


def test_description_names_a_skipped_non_finite_end(tmp_path):
  from hmx_jax import reproduce
  rows = [{"step": s, "reward": 0.1, "non_finite_skipped": int(s >= 4)}
          for s in range(1, 6)]
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  human_like = {"reward.direction": "human_like", "objective": "grpo"}
  assert reproduce.describe("human_like", human_like, 5, tmp_path) == (
      "human_like, reward.direction=human_like, objective=grpo, step 5 "
      "(steps 4-5 were not finite and skipped: the params of step 3)")
  rows[3]["non_finite_skipped"] = 0
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  pref = {"reward.direction": "reverse", "objective": "contrastive"}
  assert reproduce.describe("contrast_pref", pref, 5, tmp_path).endswith(
      "step 5 (step 5 was not finite and skipped: the params of step 4)")
  assert reproduce.describe("contrast_pref", pref, 3, tmp_path) == (
      "contrast_pref, reward.direction=reverse, objective=contrastive, "
      "step 3")


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


def test_cpu_preset_eval_settings_are_valid():
  from hmx_jax.evals import suite
  c = config_lib.load_config(f"{CONFIG}:cpu")
  suite.validate(c)
  with c.unlocked():
    c.eval.evals = ("truthfulqa", "mmlu")
  with pytest.raises(Exception, match="mmlu"):
    suite.validate(c)
