"""`hmx-feel` errors: one line naming the culprit, exit 2, no traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest

from hmx_jax.models import hf_io

from helpers import tiny_hf_model


def run_cli(*args, timeout=180):
  return subprocess.run([sys.executable, "-m", "hmx_jax.cli", *args],
                        capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments):
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if "error" in l.lower()]
  assert len(errors) == 1, proc.stderr
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tiny_llama")
  tiny_hf_model("llama").save_pretrained(directory)
  return directory


def test_unknown_model_name():
  proc = run_cli("chat", "--model", "no-such-model", "--prompt", "hi")
  assert_one_line_error(proc, "unknown model 'no-such-model'")


def test_missing_file(tmp_path):
  path = tmp_path / "absent.gguf"
  proc = run_cli("chat", "--model", str(path), "--prompt", "hi")
  assert_one_line_error(proc, str(path), "not found")


def test_unsupported_architecture(tmp_path, hf_dir):
  config = json.loads((hf_dir / "config.json").read_text())
  config["architectures"] = ["MambaForCausalLM"]
  config["model_type"] = "mamba"
  (tmp_path / "config.json").write_text(json.dumps(config))
  proc = run_cli("chat", "--model", str(tmp_path), "--prompt", "hi")
  assert_one_line_error(proc, str(tmp_path / "config.json"),
                        "MambaForCausalLM")


def _copy_with(hf_dir, out_dir, edit):
  (out_dir / "config.json").write_text((hf_dir / "config.json").read_text())
  tensors = hf_io.SafetensorsDir(str(hf_dir))
  state = {k: np.array(tensors[k]) for k in tensors.keys()}
  edit(state)
  hf_io.write_safetensors(str(out_dir / "model.safetensors"), state)


def test_missing_tensor(tmp_path, hf_dir):
  name = "model.layers.1.mlp.up_proj.weight"
  _copy_with(hf_dir, tmp_path, lambda s: s.pop(name))
  proc = run_cli("chat", "--model", str(tmp_path), "--prompt", "hi")
  assert_one_line_error(proc, "missing tensor " + name)


def test_misshaped_tensor_and_debug_traceback(tmp_path, hf_dir):
  name = "model.layers.0.self_attn.k_proj.weight"
  _copy_with(hf_dir, tmp_path, lambda s: s.update({name: s[name][:-1]}))
  proc = run_cli("chat", "--model", str(tmp_path), "--prompt", "hi")
  assert_one_line_error(proc, name, "shape (31, 64)", "expected (32, 64)")
  debug = run_cli("--debug", "chat", "--model", str(tmp_path), "--prompt",
                  "hi")
  assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_offline_hub_id_is_a_clear_error():
  proc = subprocess.run(
      [sys.executable, "-m", "hmx_jax.cli", "chat", "--model",
       "example-org/not-a-local-dir", "--prompt", "hi"],
      capture_output=True, text=True, timeout=180,
      env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
  assert_one_line_error(proc, "example-org/not-a-local-dir", "hub")


@pytest.mark.skipif(__import__("importlib").util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (the tpu extra)")
def test_no_tpu_attached_keeps_libtpu_unloaded():
  # With libtpu installed and no TPU, the CLI keeps JAX on the CPU: libtpu is
  # never mapped into the process (loading it prints warnings and takes a
  # machine-wide lock). Read from the kernel's view of the process.
  code = (
      "import jax\n"  # Imported first, as the CLI's own imports do.
      "from hmx_jax import cli\n"
      "cli._cpu_unless_tpu()\n"
      "print(jax.devices()[0].platform)\n"
      "print(any('libtpu' in line for line in open('/proc/self/maps')))\n")
  env = {k: v for k, v in __import__("os").environ.items()
         if k != "JAX_PLATFORMS"}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["cpu", "False"]
  assert "TPU" not in proc.stderr, proc.stderr
