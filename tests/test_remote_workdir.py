"""A `gs://` workdir: pods keep runs on storage every host sees.

The bucket is a local Cloud Storage emulator (`gcp-storage-emulator`, in
memory); everything else is the real thing: epath's gs:// backend (gcsfs)
for config, metrics and samples, orbax and TensorStore's GCS driver for the
checkpoints. The run must equal the same run in a local directory.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

emulator = pytest.importorskip(
    "gcp_storage_emulator.server",
    reason="gcp-storage-emulator (the test extra) is not installed")
pytest.importorskip("gcsfs", reason="gcsfs is not installed")

import jax  # noqa: E402
from etils import epath  # noqa: E402

from hmx_jax import checkpoints  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "qwen3_0p6b.py") + ":smoke"
BUCKET = "hmx-runs"


@pytest.fixture
def gcs_env(monkeypatch):
  """An emulated bucket; the variables that point gcsfs, the Cloud Storage
  client and TensorStore at it (set here, returned for subprocesses)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  server = emulator.create_server("localhost", port, in_memory=True,
                                  default_bucket=BUCKET)
  server.start()
  env = {"STORAGE_EMULATOR_HOST": f"http://localhost:{port}",
         "TENSORSTORE_GCS_HTTP_URL": f"http://localhost:{port}",
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  yield env
  server.stop()


def hmx_feel(command, workdir, env, *args) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "hmx_jax.cli", command, "--config", CONFIG,
       "--workdir", str(workdir), "--config.train.progress=false", *args],
      capture_output=True, text=True, timeout=900, cwd=ROOT,
      env={**os.environ, **env})


def train(workdir, env) -> subprocess.CompletedProcess:
  return hmx_feel("train", workdir, env)


def rows(path: epath.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # Three training runs: minutes on a 2-core CPU.
def test_gs_workdir_trains_resumes_and_equals_a_local_one(gcs_env, tmp_path):
  local = tmp_path / "local"
  done = train(local, {})
  assert done.returncode == 0, done.stderr[-3000:]

  remote = f"gs://{BUCKET}/runs/smoke"
  done = train(remote, gcs_env)
  assert done.returncode == 0, done.stderr[-3000:]
  bucket = epath.Path(remote)
  assert sorted(p.name for p in bucket.iterdir()) == [
      "checkpoints", "config.json", "metrics.jsonl", "samples.jsonl"]
  assert not os.path.exists(os.path.join(ROOT, "gs:"))  # Nothing local.
  assert checkpoints.available_steps(remote) == [1, 2]
  expected = rows(local / "metrics.jsonl")
  got = rows(bucket / "metrics.jsonl")
  assert [r["step"] for r in got] == [1, 2]
  for key in ("loss", "reward", "kl", "grad_norm"):
    np.testing.assert_allclose([r[key] for r in got],
                               [r[key] for r in expected], atol=1e-6, rtol=0)
  assert (json.loads((bucket / "config.json").read_text())
          == json.loads((local / "config.json").read_text()))
  samples = rows(bucket / "samples.jsonl")
  assert samples == rows(local / "samples.jsonl") and samples

  # A rerun resumes from the bucket's checkpoint and keeps each row once.
  again = train(remote, gcs_env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step 2" in again.stdout
  assert [r["step"] for r in rows(bucket / "metrics.jsonl")] == [1, 2]

  _, params_remote, _ = checkpoints.load_for_inference(remote, None)
  _, params_local, _ = checkpoints.load_for_inference(str(local), None)
  for a, b in zip(jax.tree.leaves(params_remote),
                  jax.tree.leaves(params_local)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # Three evaluations, two against the emulator: 2 minutes.
def test_gs_eval_writes_its_items_and_results_to_the_bucket(gcs_env,
                                                            tmp_path):
  # The base model's evaluation into a bucket equals the same into a local
  # directory, and nothing is written locally.
  def evaluate(workdir, env):
    return hmx_feel("eval", workdir, env, "--base",
                    "--config.eval.evals=('truthfulqa',)")

  local = tmp_path / "local"
  done = evaluate(local, {})
  assert done.returncode == 0, done.stderr[-3000:]
  remote = f"gs://{BUCKET}/runs/eval"
  done = evaluate(remote, gcs_env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert not os.path.exists(os.path.join(ROOT, "gs:"))
  out = epath.Path(remote) / "eval" / "base"
  assert sorted(p.name for p in out.iterdir()) == ["items", "results.json"]
  assert [p.name for p in (out / "items").iterdir()] == ["truthfulqa.npz"]
  got = json.loads((out / "results.json").read_text())["metrics"]
  want = json.loads((local / "eval" / "base" / "results.json").read_text())
  assert got == want["metrics"]
  # A rerun finds the bucket's items and computes nothing.
  again = evaluate(remote, gcs_env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "truthfulqa done" not in again.stdout


def test_gs_report_is_written_to_the_bucket(gcs_env, tmp_path):
  # reproduce's report of a gs:// experiment: the figures and files land in
  # the bucket, the training logs are read from it, nothing stays local.
  import gcsfs
  from hmx_jax import report
  from test_report import _synthetic
  gcsfs.GCSFileSystem.clear_instance_cache()  # This test's emulator.
  (tmp_path / "inputs").mkdir()
  models, comparisons, training = _synthetic(tmp_path / "inputs")
  remote = epath.Path(f"gs://{BUCKET}/runs/report")
  logs = {}
  for name, path in training.items():
    logs[name] = str(remote / "train" / name / "metrics.jsonl")
    epath.Path(logs[name]).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(logs[name]).write_text(open(path).read())
  local = tmp_path / "local"
  want = report.write_report(local, models=models, comparisons=comparisons,
                             training=training)
  got = report.write_report(str(remote), models=models,
                            comparisons=comparisons, training=logs)
  assert got == want
  assert (remote / "report.md").read_text() == (local / "report.md").read_text()
  local_files = sorted(str(p.relative_to(local)) for p in local.rglob("*")
                       if p.is_file())
  def files(folder, prefix=""):  # No recursive glob on gs://.
    for p in folder.iterdir():
      if p.is_dir():
        yield from files(p, f"{prefix}{p.name}/")
      else:
        yield prefix + p.name
  remote_files = sorted(f for f in files(remote)
                        if not f.startswith("train/"))
  assert remote_files == local_files and "report.json" in remote_files
  assert not os.path.exists(os.path.join(ROOT, "gs:"))
