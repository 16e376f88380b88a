"""`hmx-feel train`: config errors, an end-to-end run, resume equality."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hmx_jax import checkpoints, models

from helpers import (cli_in_process, kill_then_rerun, max_param_diff,
                     tiny_smol_model_dir)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "smollm2_135m.py")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
  """A tiny random Llama with the embedded SmolLM2 tokenizer."""
  return tiny_smol_model_dir(tmp_path_factory.mktemp("tiny_smol"))


def run_train(workdir, *overrides, preset="smoke", env=None):
  return subprocess.run(
      [sys.executable, "-m", "hmx_jax.cli", "train", "--config",
       f"{CONFIG}:{preset}", "--workdir", str(workdir),
       "--config.train.progress=false", *overrides],
      capture_output=True, text=True, timeout=600,
      env={**os.environ, **(env or {})})


def assert_clean_failure(proc, workdir, *fragments):
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if "error" in l.lower()]
  assert len(errors) == 1, proc.stderr
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  assert not os.path.exists(workdir), os.listdir(workdir)


def test_bad_configs_fail_cleanly_and_write_nothing(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": "a", "category": "x", "messages": '
                 '[{"role": "user", "content": "hi"}]}\n{not json\n')
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  workdir = tmp_path / "run"
  cases = [
      (["--config.data.train_prompts=" + str(bad)], [f"{bad}:2"]),
      (["--config.data.train_prompts=" + str(empty)], [str(empty), "empty"]),
      (["--config.grpo.num_generations=1"], ["grpo.num_generations=1"]),
      (["--config.reward.criteria=('feelings', 'joy')"], ["'joy'"]),
      (["--config.grpo.no_such_key=1"], ["--config.grpo.no_such_key"]),
      (["--config.reward.judge=no-such-judge"], ["unknown model"]),
      (["--config.train.prompts_per_step=3",
        "--config.mesh.shape={'data': 2, 'fsdp': 2, 'tensor': 2}"],
       ["not divisible", "data-parallel size 4"]),
      (["--config.sampling.temperature=0.0"],
       ["sampling.temperature=0.0", "advantage is 0"]),
      (["--config.model.compute_dtype=float16"],
       ["model.compute_dtype='float16'", "float32", "bfloat16"]),
      (["--config.train.eval_every=-1"], ["train.eval_every=-1"]),
      (["--config.reward.repetition_penalty=-0.1"],
       ["reward.repetition_penalty=-0.1", ">= 0"]),
      (["--config.model.param_dtype=bfloat16"],
       ["model.param_dtype=bfloat16", "round away",
        "model.compute_dtype=bfloat16"]),
  ]
  # In this process (eight devices, as conftest sets up): each case fails
  # before any work; a new interpreter would spend seconds importing JAX.
  for overrides, fragments in cases:
    proc = cli_in_process("train", "--config", f"{CONFIG}:smoke",
                          "--workdir", str(workdir),
                          "--config.train.progress=false", *overrides)
    assert_clean_failure(proc, workdir, *fragments)


def _final_params(workdir):
  config, params, _ = checkpoints.load_for_inference(str(workdir), None)
  return params


def test_run_writes_metrics_and_resume_equals_uninterrupted(tiny_model_dir,
                                                            tmp_path):
  # The judge is a separate model spec here (the same tiny checkpoint).
  common = [f"--config.model.spec={tiny_model_dir}",
            f"--config.reward.judge={tiny_model_dir}",
            "--config.optim.learning_rate=0.01",
            "--config.optim.warmup_steps=0",
            "--config.train.num_steps=3",
            "--config.train.eval_every=2", "--config.train.eval_prompts=2",
            "--config.reward.repetition_penalty=0.5"]
  straight = tmp_path / "straight"
  # The step-0 check of a try killed before its first checkpoint: the run
  # starts at step 0 again and replaces it.
  straight.mkdir()
  (straight / "metrics.jsonl").write_text('{"step": 0, "stale": 1}\n')
  proc = run_train(straight, *common)
  assert proc.returncode == 0, proc.stderr
  rows = [json.loads(l) for l in open(straight / "metrics.jsonl")]
  assert "stale" not in rows[0]
  # Held-out checks before step 1 (a row of its own), after step 2 (every
  # 2 steps) and after the last.
  assert [r["step"] for r in rows] == [0, 1, 2, 3]
  checked = [r["step"] for r in rows if "heldout/expression/judge" in r]
  assert checked == [0, 2, 3]
  for row in (rows[0], rows[2], rows[3]):
    for key in ("heldout/expression/judge", "heldout/expression/lexical",
                "heldout/expression/judge/coherence",
                "heldout/expression/length", "heldout/expression/repetition"):
      assert np.isfinite(row[key]), key
    assert 0 <= row["heldout/expression/judge"] <= 1
  # The frozen judge scores the same answers alike; the answers change as
  # the policy trains.
  assert rows[0]["heldout/expression/judge"] != rows[3][
      "heldout/expression/judge"]
  rows = rows[1:]
  for key in ("reward", "reward_std", "rewards/feelings/mean",
              "frac_reward_zero_std", "kl", "clip_ratio/region_mean",
              "entropy", "completions/mean_length",
              "completions/clipped_ratio", "judge/score_mass", "loss",
              "grad_norm", "learning_rate", "step_time",
              "tokens_per_second"):
    assert key in rows[-1] and np.isfinite(rows[-1][key]), key
  assert checkpoints.available_steps(str(straight))[-1] == 3
  assert os.path.exists(straight / "samples.jsonl")
  # The smoke preset's reward: the mean of feelings and coherence, less
  # 0.5 x repetition (a mean of per-completion rewards, so of the means).
  for row in rows:
    assert 0 <= row["rewards/repetition/mean"] < 1
    assert row["reward"] == pytest.approx(
        (row["rewards/feelings/mean"] + row["rewards/coherence/mean"]) / 2
        - 0.5 * row["rewards/repetition/mean"], abs=1e-5)

  # kill -9 once the first checkpoint exists, then the same command again.
  resumed = tmp_path / "resumed"
  args = [sys.executable, "-m", "hmx_jax.cli", "train", "--config",
          f"{CONFIG}:smoke", "--workdir", str(resumed),
          "--config.train.progress=false", *common]
  killed_at, second = kill_then_rerun(args, resumed,
                                      resumed / "checkpoints" / "1")
  assert killed_at and killed_at[-1] < 3, killed_at
  assert second.returncode == 0, second.stderr
  assert f"resumed from step {killed_at[-1]}" in second.stdout
  # The resumed run's log equals the uninterrupted one's, checks included.
  logs = [[json.loads(l) for l in open(w / "metrics.jsonl")]
          for w in (straight, resumed)]
  checks = [[(r["step"], k, v) for r in log for k, v in r.items()
             if k.startswith("heldout/")] for log in logs]
  assert [c[:2] for c in checks[1]] == [c[:2] for c in checks[0]]
  np.testing.assert_allclose([c[2] for c in checks[1]],
                             [c[2] for c in checks[0]], atol=1e-5)
  a, b = _final_params(straight), _final_params(resumed)
  assert max_param_diff(a, b) <= 1e-6
  # The run moved the parameters: resumption is not trivially equal.
  _, initial, _ = models.load_model(tiny_model_dir)
  assert max_param_diff(a, initial) > 1e-4


def test_resume_refuses_a_different_config(tiny_model_dir, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(
      {"seed": 5, "grpo": {"beta": 0.5}}))
  proc = run_train(workdir, f"--config.model.spec={tiny_model_dir}")
  assert proc.returncode == 2
  assert "different config" in proc.stderr and "grpo.beta" in proc.stderr


def test_sigterm_saves_the_current_step(tiny_model_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
      [sys.executable, "-m", "hmx_jax.cli", "train", "--config",
       f"{CONFIG}:smoke", "--workdir", str(workdir),
       "--config.train.progress=false", f"--config.model.spec={tiny_model_dir}",
       "--config.train.num_steps=50", "--config.train.checkpoint_every=100"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().strip()):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr
  steps = checkpoints.available_steps(str(workdir))
  logged = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
  # The checkpoint is the step that was running or finished at SIGTERM.
  assert steps == [logged[-1]] and f"saved step {steps[0]}" in stdout


@pytest.mark.parametrize("compute_dtype", [
    "float32", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_synthetic_reward_rises_on_a_tiny_model(tmp_path, compute_dtype):
  """GRPO raises a fraction-of-target-token reward by >= 0.3 in 40 steps,
  with float32 master weights and float32 or bfloat16 compute."""
  from helpers import tiny_chat_model_dir
  from hmx_jax import config_lib, train
  directory, vocab = tiny_chat_model_dir(tmp_path / "model")
  config = config_lib.load_config(f"{CONFIG}:smoke")
  config_lib.apply_overrides(config, [
      f"--config.model.spec={directory}",
      "--config.reward.kind=target_token",
      f"--config.reward.target_token={vocab['w7']}",
      "--config.grpo.num_generations=8", "--config.grpo.beta=0.0",
      "--config.train.prompts_per_step=4", "--config.train.num_steps=40",
      "--config.train.checkpoint_every=100",
      "--config.train.log_samples_every=0", "--config.train.progress=false",
      "--config.sampling.max_new_tokens=8", "--config.sampling.temperature=1.0",
      "--config.optim.learning_rate=0.03", "--config.optim.warmup_steps=0",
      f"--config.model.compute_dtype={compute_dtype}",
  ])
  start = time.time()
  train.train(config, str(tmp_path / "run"))
  elapsed = time.time() - start
  rewards = [json.loads(l)["reward"]
             for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert len(rewards) == 40
  first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
  print(f"reward {first:.3f} -> {last:.3f} in {elapsed:.0f}s")
  assert last - first >= 0.3, rewards


@pytest.mark.slow  # 60 s; the sharded sampler and evaluation stay
def test_sharded_training_equals_one_device(tmp_path):
  """8 simulated devices (data=2, fsdp=2, tensor=2) vs 1: same losses."""
  import jax
  from helpers import tiny_chat_model_dir
  from hmx_jax import config_lib, train
  assert len(jax.devices()) == 8
  directory, vocab = tiny_chat_model_dir(tmp_path / "model")
  losses = {}
  for name, mesh in (("one", "{}"),
                     ("mesh", "{'data': 2, 'fsdp': 2, 'tensor': 2}")):
    config = config_lib.load_config(f"{CONFIG}:smoke")
    config_lib.apply_overrides(config, [
        f"--config.model.spec={directory}", f"--config.mesh.shape={mesh}",
        "--config.reward.kind=target_token",
        f"--config.reward.target_token={vocab['w7']}",
        "--config.grpo.num_generations=4", "--config.grpo.beta=0.04",
        "--config.train.prompts_per_step=2", "--config.train.num_steps=3",
        "--config.train.checkpoint_every=100", "--config.train.progress=false",
        "--config.optim.learning_rate=0.03", "--config.optim.warmup_steps=0",
    ])
    train.train(config, str(tmp_path / name))
    losses[name] = [json.loads(l)["loss"]
                    for l in open(tmp_path / name / "metrics.jsonl")]
  assert len(losses["one"]) == 3
  np.testing.assert_allclose(losses["mesh"], losses["one"], atol=1e-4, rtol=0)
  assert any(abs(l) > 1e-3 for l in losses["one"])


@pytest.mark.slow  # 70 s
def test_on_policy_ratio_is_exactly_one_in_bfloat16(tiny_model_dir, tmp_path):
  """Default matmul precision, bf16 compute: one iteration clips nothing
  although sampler and learner disagree; a second iteration moves the
  ratio off 1."""
  common = [f"--config.model.spec={tiny_model_dir}",
            "--config.model.compute_dtype=bfloat16",
            "--config.optim.learning_rate=0.01",
            "--config.optim.warmup_steps=0", "--config.train.num_steps=2"]
  rows = {}
  for iterations in (1, 2):
    workdir = tmp_path / f"iterations_{iterations}"
    proc = run_train(workdir, *common,
                     f"--config.grpo.num_iterations={iterations}")
    assert proc.returncode == 0, proc.stderr
    rows[iterations] = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  for row in rows[1]:
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean",
                "clip_ratio/region_mean", "clip_ratio/low_min",
                "clip_ratio/high_max", "ratio/deviation/max"):
      assert row[key] == 0.0, (key, row)
    assert row["sampling/sampling_logp_difference/mean"] > 0
    assert row["sampling/sampling_logp_difference/max"] > 0
    assert row["sampling/importance_sampling_ratio/min"] < 1 < \
        row["sampling/importance_sampling_ratio/max"]
  # The logged metrics are the last (second) iteration's.
  assert all(r["ratio/deviation/max"] > 1e-4 for r in rows[2])
