"""Model hyperparameters: a frozen `ModelConfig`, the paper's presets, HF interop.

One decoder covers four families. The differences between them are a handful
of switches on `ModelConfig` (q/k norm, q/k/v bias, Gemma 2's extra norms,
soft-capping and sliding window), so a family is a preset of switches, not a
subclass.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hmx_jax.errors import UserError

FAMILIES = ("llama", "qwen2", "qwen3", "gemma2")
# Activation recomputation in the backward pass (`model.remat`): none, each
# layer whole, or each layer keeping its matmul outputs.
REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama 3 RoPE frequency scaling (transformers' `rope_type: llama3`)."""
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only LM. Hashable: it is a static jit argument.

  Attributes:
    family: one of `FAMILIES`; selects the HF architecture on export.
    vocab_size, hidden_size, intermediate_size, num_layers, num_heads,
      num_kv_heads, head_dim: the usual sizes.
    rms_norm_eps: epsilon of every RMSNorm.
    rope_theta: RoPE base frequency.
    rope_scaling: Llama 3 frequency scaling, or None.
    max_position_embeddings: the longest context the model was trained for.
    tie_embeddings: the output projection is the transposed input embedding.
    qkv_bias: q/k/v projections have biases (Qwen2).
    qk_norm: RMSNorm over each head of q and k before RoPE (Qwen3).
    norm_offset: RMSNorm scales by `norm_offset + weight` (Gemma stores w-1).
    post_norms: RMSNorm after attention and after the MLP too (Gemma 2).
    embed_scale: multiply embeddings by sqrt(hidden_size) (Gemma).
    mlp_activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU).
    attn_logit_softcap: tanh soft-capping of attention logits, or None.
    final_logit_softcap: tanh soft-capping of output logits, or None.
    query_pre_attn_scalar: attention scale is this**-0.5 (default head_dim).
    sliding_window: window of the local layers, or None for all-global.
    sliding_window_pattern: every n-th layer (1-based) is global; the others
      use `sliding_window`. Gemma 2 alternates local, global: n = 2.
    bos_token_id, eos_token_ids: special ids from the checkpoint.
    param_dtype: storage dtype of the parameters ("float32" or "bfloat16").
    dtype: compute dtype of activations and matmuls. Softmax, norms and
      logits are always float32.
    remat: recompute activations in the backward pass (`REMAT_POLICIES`):
      "none" keeps them all; "full" keeps only each layer's input and
      recomputes the layer; "dots" keeps the layer's matmul outputs without
      batch dimensions (the projections, not the attention scores) and
      recomputes the rest.
    scan_layers: run the layers as one `nn.scan` loop (compiled once, the
      default); False unrolls the loop into straight-line code (the same
      parameters, a program that grows with the layers). XLA's cost
      analysis counts a loop's body once, so exact FLOP counts need it off.
  """
  family: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10_000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 8192
  tie_embeddings: bool = True
  qkv_bias: bool = False
  qk_norm: bool = False
  norm_offset: float = 0.0
  post_norms: bool = False
  embed_scale: bool = False
  mlp_activation: str = "silu"
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  query_pre_attn_scalar: float | None = None
  sliding_window: int | None = None
  sliding_window_pattern: int = 2
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = True

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise UserError(f"model family {self.family!r} is not one of {FAMILIES}")
    if self.num_heads % self.num_kv_heads:
      raise UserError(f"num_heads={self.num_heads} is not a multiple of "
                      f"num_kv_heads={self.num_kv_heads}")
    if self.mlp_activation not in ("silu", "gelu_tanh"):
      raise UserError(f"mlp_activation {self.mlp_activation!r} is not silu "
                      "or gelu_tanh")
    if self.remat not in REMAT_POLICIES:
      raise UserError(f"model.remat={self.remat!r} is not one of "
                      f"{', '.join(REMAT_POLICIES)}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise UserError(f"{name}={getattr(self, name)!r} is not float32, "
                        "bfloat16 or float16")

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  @property
  def attention_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def layer_windows(self) -> tuple[int | None, ...]:
    """Per-layer attention window (None: global), in layer order."""
    if self.sliding_window is None:
      return (None,) * self.num_layers
    return tuple(
        None if (i + 1) % self.sliding_window_pattern == 0
        else self.sliding_window for i in range(self.num_layers))


# Switches that define each family; sizes come from the preset or checkpoint.
_FAMILY_SWITCHES = {
    "llama": dict(),
    "qwen2": dict(qkv_bias=True),
    "qwen3": dict(qk_norm=True),
    "gemma2": dict(norm_offset=1.0, post_norms=True, embed_scale=True,
                   mlp_activation="gelu_tanh", sliding_window_pattern=2),
}

_HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
}
_FAMILY_TO_HF = {v: k for k, v in _HF_ARCHITECTURES.items()}


def family_config(family: str, **sizes) -> ModelConfig:
  """A `ModelConfig` of `family` with the family's switches and `sizes`."""
  if family not in _FAMILY_SWITCHES:
    raise UserError(f"model family {family!r} is not one of {FAMILIES}")
  return ModelConfig(family=family, **{**_FAMILY_SWITCHES[family], **sizes})


# Published hyperparameters (each model's config.json on the HF hub).
PRESETS: dict[str, ModelConfig] = {
    "smollm2-135m-instruct": family_config(
        "llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=100_000.0, max_position_embeddings=8192,
        tie_embeddings=True, bos_token_id=1, eos_token_ids=(2,)),
    "qwen3-0.6b": family_config(
        "qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        max_position_embeddings=40960, tie_embeddings=True,
        bos_token_id=151643, eos_token_ids=(151645, 151643)),
    "qwen3-4b": family_config(
        "qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
        num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        max_position_embeddings=40960, tie_embeddings=True,
        bos_token_id=151643, eos_token_ids=(151645, 151643)),
    "qwen3-8b": family_config(
        "qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        max_position_embeddings=40960, tie_embeddings=False,
        bos_token_id=151643, eos_token_ids=(151645, 151643)),
    "gemma-2-2b-it": family_config(
        "gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216,
        num_layers=26, num_heads=8, num_kv_heads=4, head_dim=256,
        rms_norm_eps=1e-6, rope_theta=10_000.0, max_position_embeddings=8192,
        tie_embeddings=True, attn_logit_softcap=50.0,
        final_logit_softcap=30.0, query_pre_attn_scalar=256,
        sliding_window=4096, bos_token_id=2, eos_token_ids=(1, 107)),
    "llama-3.2-3b-instruct": family_config(
        "llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192,
        num_layers=28, num_heads=24, num_kv_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500_000.0,
        rope_scaling=RopeScaling(factor=32.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0,
                                 original_max_position_embeddings=8192),
        max_position_embeddings=131072, tie_embeddings=True,
        bos_token_id=128000, eos_token_ids=(128001, 128008, 128009)),
}

# Hub ids of the presets, for users with a network.
PRESET_HUB_IDS = {
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "llama-3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct",
}


def _as_tuple(ids) -> tuple[int, ...]:
  if ids is None:
    return ()
  if isinstance(ids, int):
    return (ids,)
  return tuple(int(i) for i in ids)


def from_hf_config(hf: dict[str, Any], source: str = "config.json"
                   ) -> ModelConfig:
  """Builds a `ModelConfig` from a transformers config dict.

  Args:
    hf: the parsed config.json.
    source: where `hf` came from, for error messages.

  Raises:
    UserError: the architecture is not supported or a key is missing.
  """
  archs = hf.get("architectures") or []
  family = next((_HF_ARCHITECTURES[a] for a in archs if a in _HF_ARCHITECTURES),
                None)
  if family is None:
    family = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
              "gemma2": "gemma2"}.get(hf.get("model_type"))
  if family is None:
    got = ", ".join(archs) or hf.get("model_type") or "none given"
    raise UserError(f"{source}: unsupported architecture {got}; supported: "
                    f"{', '.join(_HF_ARCHITECTURES)}")
  # transformers >= 5 nests rope settings in `rope_parameters`; older
  # checkpoints keep `rope_theta` and `rope_scaling` at the top level.
  rope = dict(hf.get("rope_parameters") or {})
  legacy_scaling = hf.get("rope_scaling") or {}
  rope = {**legacy_scaling, **rope}
  rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  scaling = None
  if rope_type == "llama3":
    scaling = RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(
            rope["original_max_position_embeddings"]))
  elif rope_type not in ("default", None):
    raise UserError(f"{source}: rope_type {rope_type!r} is not supported "
                    "(default, llama3)")
  try:
    heads = hf["num_attention_heads"]
    sizes = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
    )
  except KeyError as e:
    raise UserError(f"{source}: missing key {e.args[0]!r}") from None
  extra = {}
  if family == "gemma2":
    extra = dict(
        attn_logit_softcap=hf.get("attn_logit_softcapping"),
        final_logit_softcap=hf.get("final_logit_softcapping"),
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar"),
        sliding_window=hf.get("sliding_window"),
    )
  if family == "qwen2" and hf.get("use_sliding_window"):
    raise UserError(f"{source}: Qwen2 use_sliding_window=true is not "
                    "supported")
  return family_config(
      family, **sizes,
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=float(rope_theta),
      rope_scaling=scaling,
      max_position_embeddings=hf.get("max_position_embeddings", 8192),
      tie_embeddings=bool(hf.get("tie_word_embeddings",
                                 family in ("gemma2",))),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=_as_tuple(hf.get("eos_token_id")),
      **extra)


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
  """The transformers config.json dict for `config`."""
  hf = {
      "architectures": [_FAMILY_TO_HF[config.family]],
      "model_type": config.family,
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "rms_norm_eps": config.rms_norm_eps,
      "max_position_embeddings": config.max_position_embeddings,
      "tie_word_embeddings": config.tie_embeddings,
      "bos_token_id": config.bos_token_id,
      "eos_token_id": (list(config.eos_token_ids)
                       if len(config.eos_token_ids) != 1
                       else config.eos_token_ids[0]),
      "torch_dtype": config.param_dtype,
      "dtype": config.param_dtype,
      "hidden_act": "silu",
      "attention_bias": config.qkv_bias,
      # Both spellings, so transformers 4.x and 5.x read the same RoPE.
      "rope_theta": config.rope_theta,
  }
  rope_parameters = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling is not None:
    scaling = {"rope_type": "llama3",
               **dataclasses.asdict(config.rope_scaling)}
    hf["rope_scaling"] = scaling
    rope_parameters = {**scaling, "rope_theta": config.rope_theta}
  hf["rope_parameters"] = rope_parameters
  if config.family == "gemma2":
    hf.update(
        hidden_activation="gelu_pytorch_tanh",
        hidden_act="gelu_pytorch_tanh",
        attn_logit_softcapping=config.attn_logit_softcap,
        final_logit_softcapping=config.final_logit_softcap,
        query_pre_attn_scalar=config.query_pre_attn_scalar or config.head_dim,
        sliding_window=config.sliding_window,
        layer_types=["full_attention" if w is None else "sliding_attention"
                     for w in config.layer_windows()])
  if config.family == "qwen2":
    hf["use_sliding_window"] = False
  return hf
