"""`hmx-feel export`: training checkpoints as HF directories.

Each directory is loaded by transformers (torch) and compared with our
forward of the same checkpoint; the tokenizer by transformers'
`AutoTokenizer`, against ours and the published chat templates.
"""

import json
import os
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

from hmx_jax import checkpoints, cli, config_lib, models
from hmx_jax.models import chat_format, export, hf_io, tiny

from helpers import hf_logits, max_diff_on_real_tokens, random_batch

# Tiny model spec -> the config whose smoke preset trains it.
SMOKE_CONFIGS = {"tiny-qwen3": "configs/qwen3_0p6b.py:smoke",
                 "tiny-gemma2": "configs/gemma2_2b_it.py:smoke",
                 "tiny-llama3": "configs/llama3p2_3b.py:smoke"}
STEP = 3
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "How do you feel today? Ça va, 42 ünïcode."},
    {"role": "assistant", "content": "I feel calm and curious."},
    {"role": "user", "content": "Why?"}]
NO_SYSTEM = CONVERSATION[1:]
# Longer than tiny-gemma2's 64-token sliding window, so it is exercised.
BATCH, LENGTH = 2, 80


def _write_workdir(directory, spec: str, seed: int = 1) -> str:
  """A workdir as `hmx-feel train` leaves it: the resolved config, and params
  moved away from the base model (as training moves them) at step `STEP`."""
  os.makedirs(directory, exist_ok=True)
  config = config_lib.load_config(SMOKE_CONFIGS[spec])
  with open(os.path.join(directory, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  _, params, _ = models.load_model(spec)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  moved = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
           for x, k in zip(leaves, keys)]
  checkpoints.save_params(str(directory),
                          STEP, jax.tree.unflatten(treedef, moved))
  return str(directory)


def _export(*args) -> int:
  return cli.main(["export", *map(str, args)])


@pytest.fixture(scope="module", params=sorted(SMOKE_CONFIGS))
def exported(request, tmp_path_factory):
  """(spec, workdir, OUT) of a float32 export in 100 kB shards (the tiny
  models hold ~0.4 MB, so several files under an index)."""
  spec = request.param
  directory = _write_workdir(tmp_path_factory.mktemp(spec), spec)
  out = tmp_path_factory.mktemp(spec + "_export") / "hf"
  assert _export("--workdir", directory, "--out", out,
                 "--max-shard-size", "100KB") == 0
  return spec, directory, out


def _ours(directory):
  """Our (config, params, tokenizer) of a workdir's latest checkpoint."""
  return checkpoints.load_for_inference(directory, None)


def _our_logits(config, params, tokens, mask):
  return np.asarray(models.forward(config, params, tokens, mask))


def _hf_model(directory, dtype=None):
  import transformers
  kwargs = {} if dtype is None else {"dtype": dtype}
  return transformers.AutoModelForCausalLM.from_pretrained(
      str(directory), **kwargs).eval()


def _chat_ids(hf_tokenizer, messages):
  ids = hf_tokenizer.apply_chat_template(
      messages, tokenize=True, add_generation_prompt=True,
      enable_thinking=False, date_string=chat_format.DEFAULT_DATE)
  return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_float32_export_matches_transformers(exported):
  import torch
  spec, directory, out = exported
  config, params, _ = _ours(directory)
  model = _hf_model(out, torch.float32)
  assert type(model).__name__ == {"qwen3": "Qwen3ForCausalLM",
                                  "gemma2": "Gemma2ForCausalLM",
                                  "llama": "LlamaForCausalLM"}[config.family]
  # Tied as trained: one tensor serves as embedding and output projection.
  assert model.config.tie_word_embeddings
  assert (model.lm_head.weight.data_ptr()
          == model.model.embed_tokens.weight.data_ptr())
  tokens, mask = random_batch(BATCH, LENGTH, config.vocab_size)
  expected = hf_logits(model, tokens, mask)
  ours = _our_logits(config, params, tokens, mask)
  assert max_diff_on_real_tokens(ours, expected, mask) <= 1e-4
  # The checkpoint was exported, not the base model it started from.
  base_config, base_params, _ = models.load_model(spec)
  base = _our_logits(base_config, base_params, tokens, mask)
  assert max_diff_on_real_tokens(base, expected, mask) > 1e-2
  # Read back through our loader: bit for bit the checkpoint.
  _, reloaded, _ = models.load_model(str(out))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_files_and_index(exported):
  from safetensors import safe_open
  _, _, out = exported
  limit = 100_000
  index = json.loads((out / export.INDEX_NAME).read_text())
  files = sorted(p.name for p in out.glob("*.safetensors"))
  assert len(files) > 1 and not (out / export.WEIGHTS_NAME).exists()
  assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors"
                   for i in range(1, len(files) + 1)]
  assert sorted(set(index["weight_map"].values())) == files
  total = 0
  for name in files:
    with safe_open(str(out / name), framework="np") as f:
      tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert {k for k, v in index["weight_map"].items() if v == name} == set(
        tensors)
    sizes = [t.nbytes for t in tensors.values()]
    # transformers' rule: a file stays under the limit unless one tensor
    # alone exceeds it.
    assert sum(sizes) <= limit or len(sizes) == 1
    total += sum(sizes)
  assert index["metadata"]["total_size"] == total


def test_tokenizer_files_load_and_encode_like_ours(exported):
  import transformers
  spec, directory, out = exported
  _, _, tokenizer = _ours(directory)
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  # The published template, verbatim, in tokenizer_config.json.
  config = json.loads((out / "tokenizer_config.json").read_text())
  assert config["chat_template"] == tiny.template_text(
      tiny.SPECS[spec].template)
  ours = chat_format.ChatFormat(tokenizer)
  assert _chat_ids(hf_tokenizer, NO_SYSTEM) == ours.encode(NO_SYSTEM)
  assert (chat_format.ChatFormat(hf_tokenizer).encode(CONVERSATION)
          == ours.encode(CONVERSATION))
  text = "Raw text, as TruthfulQA's primer is encoded."
  assert (hf_tokenizer.encode(text, add_special_tokens=True)
          == tokenizer.encode(text, add_special_tokens=True))
  generation = json.loads((out / "generation_config.json").read_text())
  eos = generation["eos_token_id"]
  assert tokenizer.convert_tokens_to_ids(tiny.SPECS[spec].eos_token) in (
      eos if isinstance(eos, list) else [eos])


def test_bfloat16_export(tmp_path_factory, tmp_path):
  """bf16 weights are the checkpoint rounded to nearest-even (torch's cast);
  on them transformers' float32 forward equals ours to 1e-4, and its
  bfloat16 forward stays within 4 bf16 ulps of the float32 logits."""
  import torch
  directory = _write_workdir(tmp_path_factory.mktemp("bf16"), "tiny-qwen3")
  f32, bf16 = tmp_path / "f32", tmp_path / "bf16"
  assert _export("--workdir", directory, "--out", f32) == 0
  assert _export("--workdir", directory, "--out", bf16,
                 "--dtype", "bfloat16") == 0
  assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
  from safetensors.torch import load_file
  full, half = (load_file(str(d / export.WEIGHTS_NAME)) for d in (f32, bf16))
  assert set(full) == set(half)
  for name, weight in full.items():
    assert half[name].dtype == torch.bfloat16
    assert torch.equal(half[name], weight.to(torch.bfloat16)), name

  config, params, _ = _ours(directory)
  tokens, mask = random_batch(BATCH, LENGTH, config.vocab_size)
  rounded = jax.tree.map(
      lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
  upcast = hf_logits(_hf_model(bf16, torch.float32), tokens, mask)
  assert max_diff_on_real_tokens(
      _our_logits(config, rounded, tokens, mask), upcast, mask) <= 1e-4

  model = _hf_model(bf16)  # The dtype config.json declares.
  assert model.model.embed_tokens.weight.dtype == torch.bfloat16
  low = hf_logits(model, tokens, mask)
  ours = _our_logits(config, params, tokens, mask)
  # bf16 keeps 8 significant bits: its spacing at the largest logit is
  # 2**(floor(log2 max|logit|) - 7). The logits are themselves rounded to
  # bf16 (half an ulp) after two layers of bf16 roundings; 4 ulps bound
  # that, and a wrong weight or config moves logits by far more.
  ulp = 2.0 ** (np.floor(np.log2(np.abs(ours[mask.astype(bool)]).max())) - 7)
  assert max_diff_on_real_tokens(low, ours, mask) <= 4 * ulp


def _assert_one_line_error(capsys, *fragments):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith("hmx-feel: error: "), err
  for fragment in fragments:
    assert fragment in err[0], err[0]


def _nothing_written(parent, name):
  return [p for p in os.listdir(parent) if name in p] == []


@pytest.fixture(scope="module")
def qwen3_workdir(tmp_path_factory):
  return _write_workdir(tmp_path_factory.mktemp("errors"), "tiny-qwen3")


def test_missing_workdir_step_or_full_out_exit_2(qwen3_workdir, tmp_path,
                                                  capsys):
  out = tmp_path / "hf"
  missing = tmp_path / "no_such_run"
  assert _export("--workdir", missing, "--out", out) == 2
  _assert_one_line_error(capsys, str(missing), "workdir not found")
  assert _export("--workdir", qwen3_workdir, "--step", 7, "--out", out) == 2
  _assert_one_line_error(capsys, "no checkpoint for step 7",
                         f"available: {STEP}")
  assert _export("--workdir", qwen3_workdir, "--out", out,
                 "--max-shard-size", "5 parsecs") == 2
  _assert_one_line_error(capsys, "--max-shard-size", "5 parsecs")
  assert _nothing_written(tmp_path, "hf")

  out.mkdir()
  (out / "keep.txt").write_text("someone's file")
  assert _export("--workdir", qwen3_workdir, "--out", out) == 2
  _assert_one_line_error(capsys, str(out), "not an empty directory")
  assert os.listdir(out) == ["keep.txt"]
  assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_empty_out_is_filled(qwen3_workdir, tmp_path):
  out = tmp_path / "hf"
  out.mkdir()
  assert _export("--workdir", qwen3_workdir, "--out", out) == 0
  assert (out / export.WEIGHTS_NAME).exists()
  assert os.listdir(tmp_path) == ["hf"]


def test_failure_while_writing_leaves_no_output(qwen3_workdir, tmp_path,
                                                monkeypatch):
  out = tmp_path / "hf"
  real_write = hf_io.write_safetensors
  written = []

  def write_then_fail(path, tensors, metadata=None):
    if written:
      raise OSError(28, "No space left on device")
    written.append(path)
    real_write(path, tensors, metadata)

  monkeypatch.setattr(hf_io, "write_safetensors", write_then_fail)
  with pytest.raises(OSError, match="No space left"):
    export.export_checkpoint(qwen3_workdir, str(out), max_shard_size="100KB")
  assert written and os.listdir(tmp_path) == []


def test_gather_of_sharded_params():
  """Params sharded over a mesh come back whole, in the requested dtype."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
  value = np.arange(8 * 12, dtype=np.float32).reshape(8, 12) / 7
  sharded = jax.device_put(value, NamedSharding(mesh, P("data", "fsdp")))
  host = export.gather_to_host({"w": sharded}, ml_dtypes.bfloat16)
  assert isinstance(host["w"], np.ndarray)
  assert host["w"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(host["w"], value.astype(ml_dtypes.bfloat16))


# ---------------------------------------------------- real training runs


def _run(*args, timeout=900):
  proc = subprocess.run([sys.executable, "-m", "hmx_jax.cli", *map(str, args)],
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.mark.slow
def test_smoke_trained_qwen3_exports(tmp_path):
  import torch
  workdir, out = tmp_path / "run", tmp_path / "hf"
  _run("train", "--config", SMOKE_CONFIGS["tiny-qwen3"], "--workdir", workdir)
  _run("export", "--workdir", workdir, "--out", out)
  config, params, _ = _ours(str(workdir))
  tokens, mask = random_batch(BATCH, LENGTH, config.vocab_size)
  expected = hf_logits(_hf_model(out, torch.float32), tokens, mask)
  assert max_diff_on_real_tokens(
      _our_logits(config, params, tokens, mask), expected, mask) <= 1e-4


@pytest.mark.slow
def test_smollm2_checkpoint_exports(tmp_path):
  """The embedded model after two smoke steps: weights, config and the
  tokenizer built from GGUF metadata leave the project intact, and
  transformers' float32 forward of the export equals ours within 1e-4 (the
  logits reach |40| over 30 layers; measured 8.9e-5 on a 34-token text,
  with transformers' own float32 forward 6.2e-5 from the float64 one).
  """
  import torch
  import transformers
  from hmx_jax.models import gguf_io
  workdir, out, bf16 = tmp_path / "run", tmp_path / "hf", tmp_path / "bf16"
  _run("train", "--config", "configs/smollm2_135m.py:smoke", "--workdir",
       workdir)
  _run("export", "--workdir", workdir, "--out", out, "--max-shard-size",
       "200MB")
  _run("export", "--workdir", workdir, "--out", bf16, "--dtype", "bfloat16")
  assert len(list(out.glob("*.safetensors"))) > 1  # 538 MB of float32.
  config, params, tokenizer = _ours(str(workdir))
  _, reloaded, _ = models.load_model(str(out))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  # transformers' own GGUF tokenizer of the embedded file is the reference.
  gguf = gguf_io.embedded_gguf_path()
  reference = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
  ids = chat_format.ChatFormat(tokenizer).encode(CONVERSATION)
  assert (_chat_ids(hf_tokenizer, CONVERSATION)
          == _chat_ids(reference, CONVERSATION) == ids)

  tokens = np.asarray([ids, ids[::-1]])
  mask = np.ones_like(tokens)
  mask[1, :5] = 0
  rounded = jax.tree.map(
      lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
  # float32 export against our params, bfloat16 export against ours rounded,
  # both run in float32.
  for directory, ours_params in ((out, params), (bf16, rounded)):
    ours = _our_logits(config, ours_params, tokens, mask)
    theirs = hf_logits(_hf_model(directory, torch.float32), tokens, mask)
    assert max_diff_on_real_tokens(ours, theirs, mask) <= 1e-4, directory


# ------------------------------------------------------- several processes

_GATHER = """
import sys
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from hmx_jax.models import export
mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "fsdp"))
value = np.arange(8 * 12, dtype=np.float32).reshape(8, 12) / 7
array = jax.make_array_from_callback(
    value.shape, NamedSharding(mesh, P("data", "fsdp")), lambda i: value[i])
assert not array.is_fully_addressable
host = export.gather_to_host({"w": array}, np.float32)["w"]
np.testing.assert_array_equal(host, value)
print("gathered", jax.process_index(), host.shape)
"""


def _pair(argv, tmp_path, name):
  """Runs `argv + [coordinator, process id]` as processes 0 and 1."""
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {**os.environ,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [subprocess.Popen(
      [*argv(f"localhost:{port}", str(i))], env=env, text=True,
      stdout=open(tmp_path / f"{name}.p{i}.log", "w"),
      stderr=subprocess.STDOUT) for i in range(2)]
  for p in procs:
    p.wait(timeout=600)
  logs = [(tmp_path / f"{name}.p{i}.log").read_text() for i in range(2)]
  assert [p.returncode for p in procs] == [0, 0], logs
  return logs


def test_gather_across_processes(tmp_path):
  """A parameter sharded over two processes' devices comes back whole on
  each (`process_allgather`)."""
  logs = _pair(lambda address, i: [sys.executable, "-c", _GATHER, address, i],
               tmp_path, "gather")
  assert "gathered 0 (8, 12)" in logs[0] and "gathered 1 (8, 12)" in logs[1]


@pytest.mark.slow
def test_two_process_export_is_written_once(qwen3_workdir, tmp_path):
  out = tmp_path / "hf"
  logs = _pair(lambda address, i: [
      sys.executable, "-m", "hmx_jax.cli", "export", "--workdir",
      qwen3_workdir, "--out", str(out), "--coordinator-address", address,
      "--num-processes", "2", "--process-id", i], tmp_path, "export")
  assert f"wrote {out}" in logs[0] and "wrote" not in logs[1]
  single = tmp_path / "single"
  assert _export("--workdir", qwen3_workdir, "--out", single) == 0
  for name in os.listdir(single):
    assert (out / name).read_bytes() == (single / name).read_bytes(), name
