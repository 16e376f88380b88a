"""One linen decoder for the Llama, Qwen2, Qwen3 and Gemma 2 families.

Parameters are a plain pytree; layers are stacked along a leading `layers`
axis and run with `nn.scan`, which keeps compile time flat in depth. The KV
cache is a plain pytree `{"k", "v"}`, each
`[layers, batch, kv_heads, cache_len, head_dim]`: the decoder reads it and
returns the new tokens' keys and values, and the caller writes them with
`update_cache` (one in-place update per step, outside the layer scan).

Positions and masks work in cache *slots*: a batch is left-padded so that
every sequence's last prompt token sits in the same slot, the slot of a key
and a query differ by the same amount as their positions do, and padding
keys are masked out (`make_attention_mask`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from hmx_jax import sharding
from hmx_jax.kernels import cpu as cpu_kernels
from hmx_jax.models.config import ModelConfig

# A window larger than any context: the value used for global layers.
GLOBAL_WINDOW = 2**30
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def _dtype(name: str):
  return jnp.dtype(name)


def rope_inv_freq(config: ModelConfig) -> jax.Array:
  """RoPE inverse frequencies [head_dim // 2], with Llama 3 scaling if set."""
  dim = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (
      jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  s = config.rope_scaling
  if s is None:
    return inv_freq
  low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
  smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor))
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x_BTHD: jax.Array, positions_BT: jax.Array,
               inv_freq: jax.Array) -> jax.Array:
  """Rotates halves of each head (the HF `rotate_half` layout)."""
  angles = positions_BT.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x = x_BTHD.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_BTHD.dtype)


class RMSNorm(nn.Module):
  """RMSNorm in float32; scales by `offset + weight` (Gemma: offset 1)."""
  eps: float
  offset: float
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale = self.param(
        "scale", nn.with_logical_partitioning(init, (self.axis_name,)),
        (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(
        jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (normed * (self.offset + scale.astype(jnp.float32))).astype(x.dtype)


def _param(module, name, shape, logical, config, init=None):
  init = init or nn.initializers.normal(0.02)
  value = module.param(name, nn.with_logical_partitioning(init, logical),
                       shape, _dtype(config.param_dtype))
  return value.astype(_dtype(config.dtype))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CpuDecode:
  """What the CPU decode kernels (`hmx_jax.kernels.cpu`) read.

  Built by `pack_for_decode`; passing it to `Decoder.__call__` routes every
  weight matmul (and the output projection) through `cpu.matmul`, which
  reads each layer's panels in place in the stacked array. For one new
  token per row with a cache, attention runs `cpu.decode_attention` on the
  stacked cache, also in place.

  Attributes:
    weights: "attn/qkv" (q, k and v side by side), "attn/o",
      "mlp/gate_up" (gate and up side by side), "mlp/down" ->
      [layers, P, K, 32]; "lm_head" -> [1, P, hidden, 32].
    widths: (name, output columns) pairs: the matrices' unpadded widths.
    cache: the stacked KV cache of a decoding step (set by the decoder).
    layer: the layer being run (set by the layer scan through `at_layer`).
  """
  weights: dict[str, jax.Array]
  widths: tuple[tuple[str, int], ...] = dataclasses.field(
      metadata=dict(static=True))
  cache: dict[str, jax.Array] | None = None
  layer: jax.Array | None = None

  def at_layer(self, layer) -> CpuDecode:
    return dataclasses.replace(self, layer=layer)

  def attend(self, q_BKGD, k_BKD, v_BKD, allowed_BS, scale, softcap):
    return cpu_kernels.decode_attention(q_BKGD, k_BKD, v_BKD, self.cache,
                                        self.layer, allowed_BS, scale,
                                        softcap)

  def matmul(self, name: str, x: jax.Array) -> jax.Array:
    layer = 0 if name == "lm_head" else self.layer
    return cpu_kernels.matmul(x, self.weights[name], dict(self.widths)[name],
                              layer)


def can_pack_for_decode(config: ModelConfig) -> bool:
  """Whether the CPU decode kernel applies: float32 weights and compute."""
  return config.dtype == "float32" and config.param_dtype == "float32"


def pack_for_decode(config: ModelConfig, params) -> CpuDecode:
  """Packs the weights for `Decoder(..., kernels=...)` (a float32 copy)."""
  p = as_variables(params)["params"]
  attn, mlp = p["layers"]["attn"], p["layers"]["mlp"]
  c = config
  L, D, H, K, Dh = (c.num_layers, c.hidden_size, c.num_heads,
                    c.num_kv_heads, c.head_dim)
  # Matrices that read the same input are concatenated: one call each.
  matrices = {
      "attn/qkv": jnp.concatenate([attn["q"].reshape(L, D, H * Dh),
                                   attn["k"].reshape(L, D, K * Dh),
                                   attn["v"].reshape(L, D, K * Dh)], axis=-1),
      "attn/o": attn["o"].reshape(L, H * Dh, D),
      "mlp/gate_up": jnp.concatenate([mlp["gate"], mlp["up"]], axis=-1),
      "mlp/down": mlp["down"],
  }
  weights = {k: cpu_kernels.pack(w) for k, w in matrices.items()}
  widths = [(k, w.shape[-1]) for k, w in matrices.items()]
  if c.tie_embeddings:
    weights["lm_head"] = cpu_kernels.pack(p["embedding"][None],
                                          transposed=True)
  else:
    weights["lm_head"] = cpu_kernels.pack(p["lm_head"][None])
  widths.append(("lm_head", c.vocab_size))
  return CpuDecode(weights=weights, widths=tuple(widths))


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask: AttentionMask, window,
               past_kv, kernels: CpuDecode | None = None):
    """Attends over the past cache (if any) and the T new tokens.

    Returns the output [B, T, D] and the new keys and values
    ([B, kv_heads, T, head_dim] each), which the caller writes to the cache.
    The past cache is only read: the two key sets share one softmax, so no
    per-layer copy of the cache is made.
    """
    c = self.config
    D, H, K, Dh = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    wq = _param(self, "q", (D, H, Dh), ("embed", "heads", "head_dim"), c)
    wk = _param(self, "k", (D, K, Dh), ("embed", "kv_heads", "head_dim"), c)
    wv = _param(self, "v", (D, K, Dh), ("embed", "kv_heads", "head_dim"), c)
    wo = _param(self, "o", (H, Dh, D), ("heads", "head_dim", "embed"), c)
    B, T = x_BTD.shape[:2]
    if kernels is None:
      q = jnp.einsum("btd,dhk->bthk", x_BTD, wq)
      k = jnp.einsum("btd,dhk->bthk", x_BTD, wk)
      v = jnp.einsum("btd,dhk->bthk", x_BTD, wv)
    else:
      q, k, v = jnp.split(kernels.matmul("attn/qkv", x_BTD),
                          [H * Dh, (H + K) * Dh], axis=-1)
      q = q.reshape(B, T, H, Dh)
      k = k.reshape(B, T, K, Dh)
      v = v.reshape(B, T, K, Dh)
    if c.qkv_bias:
      zeros = nn.initializers.zeros
      q += _param(self, "q_bias", (H, Dh), ("heads", "head_dim"), c, zeros)
      k += _param(self, "k_bias", (K, Dh), ("kv_heads", "head_dim"), c, zeros)
      v += _param(self, "v_bias", (K, Dh), ("kv_heads", "head_dim"), c, zeros)
    if c.qk_norm:
      q = RMSNorm(c.rms_norm_eps, c.norm_offset, "head_dim", name="q_norm")(q)
      k = RMSNorm(c.rms_norm_eps, c.norm_offset, "head_dim", name="k_norm")(k)
    inv_freq = rope_inv_freq(c)
    q = apply_rope(q, positions_BT, inv_freq)
    k = apply_rope(k, positions_BT, inv_freq)
    q = sharding.constrain(q, ("batch", "seq", "heads", "head_dim"))

    G = H // K
    # Cache layout [B, kv_heads, S, Dh] and queries as [B, kv_heads, T*G, Dh]:
    # (batch, kv head) lead in every attention dot, so XLA needs no transposes
    # of the (large) cache.
    q = q.reshape(B, T, K, G, Dh).transpose(0, 2, 1, 3, 4).reshape(
        B, K, T * G, Dh)
    k = k.transpose(0, 2, 1, 3)
    v = v.transpose(0, 2, 1, 3)
    batch_dims = ((0, 1), (0, 1))

    def visible(mask_BTS, slot_diff_TS):
      return mask_BTS & (slot_diff_TS < window)

    def scores(keys, allowed_BTS, slot_diff_TS):
      logits = jax.lax.dot_general(q, keys.astype(q.dtype),
                                   (((3,), (3,)), batch_dims),
                                   preferred_element_type=jnp.float32)
      logits *= c.attention_scale
      if c.attn_logit_softcap:
        cap = c.attn_logit_softcap
        logits = jnp.tanh(logits / cap) * cap
      allowed = visible(allowed_BTS, slot_diff_TS)
      logits = logits.reshape(B, K, T, G, -1)
      logits = jnp.where(allowed[:, None, :, None], logits, _MASK_VALUE)
      return logits.reshape(B, K, T * G, -1)

    def mix(probs, values):
      return jax.lax.dot_general(probs, values.astype(probs.dtype),
                                 (((3,), (2,)), batch_dims))

    def project(out_BKTGD):
      out = out_BKTGD.transpose(0, 2, 1, 3, 4)
      if kernels is not None:
        return kernels.matmul("attn/o", out.reshape(B, T, H * Dh))
      return jnp.einsum("bthk,hkd->btd", out.reshape(B, T, H, Dh), wo)

    if kernels is not None and kernels.cache is not None:
      # One new token per row; the kernel reads this layer of the cache.
      allowed = visible(mask.past_mask, mask.past_diff)
      out = kernels.attend(q, k[:, :, 0], v[:, :, 0], allowed[:, 0],
                           c.attention_scale, c.attn_logit_softcap)
      return project(out[:, :, None]), (k, v)

    logits = scores(k, mask.self_mask, mask.self_diff)
    if past_kv is not None:
      past = scores(past_kv[0], mask.past_mask, mask.past_diff)
      logits = jnp.concatenate([past, logits], axis=-1)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    S = logits.shape[-1] - T
    out = mix(probs[..., S:], v)
    if past_kv is not None:
      out += mix(probs[..., :S], past_kv[1])
    return project(out.reshape(B, K, T, G, Dh)), (k, v)


class MLP(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, kernels: CpuDecode | None = None):
    c = self.config
    D, F = c.hidden_size, c.intermediate_size
    gate = _param(self, "gate", (D, F), ("embed", "mlp"), c)
    up = _param(self, "up", (D, F), ("embed", "mlp"), c)
    down = _param(self, "down", (F, D), ("mlp", "embed"), c)
    act = (jax.nn.silu if c.mlp_activation == "silu"
           else functools.partial(jax.nn.gelu, approximate=True))
    if kernels is not None:
      gate, up = jnp.split(kernels.matmul("mlp/gate_up", x_BTD), 2, axis=-1)
      return kernels.matmul("mlp/down", act(gate) * up)
    h = act(x_BTD @ gate) * (x_BTD @ up)
    h = sharding.constrain(h, ("batch", "seq", "mlp"))
    return h @ down


class Block(nn.Module):
  """One decoder layer: the scan body.

  Scanned inputs: (window, past k, v, layer index); `kernels` (broadcast)
  holds every layer's packed weights, read at the layer index.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x, layer_inputs, positions_BT, mask, kernels=None):
    c = self.config
    window, past_kv, layer = layer_inputs
    if kernels is not None:
      kernels = kernels.at_layer(layer)
    norm = functools.partial(RMSNorm, c.rms_norm_eps, c.norm_offset)
    h = norm(name="input_norm")(x)
    h, new_kv = Attention(c, name="attn")(h, positions_BT, mask, window,
                                          past_kv, kernels)
    if c.post_norms:
      h = norm(name="post_attn_norm")(h)
    x = x + h
    h = norm(name="pre_mlp_norm")(x)
    h = MLP(c, name="mlp")(h, kernels)
    if c.post_norms:
      h = norm(name="post_mlp_norm")(h)
    x = x + h
    x = sharding.constrain(x, ("batch", "seq", None))
    return x, new_kv


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
  """Which keys each of the T new queries sees, in cache slots.

  Attributes:
    self_mask: [B, T, T] causal and padding mask among the new tokens.
    self_diff: [T, T] query slot minus key slot (for sliding windows), or
      [B, T, T] position differences where slots and positions differ.
    past_mask: [B, T, S] mask over the S cached slots, or None.
    past_diff: [T, S] (or [B, T, S]) query minus cached slot, or None.
  """
  self_mask: jax.Array
  self_diff: jax.Array
  past_mask: jax.Array | None = None
  past_diff: jax.Array | None = None


def make_attention_mask(new_mask_BT, cache_index=0, past_key_mask_BS=None
                        ) -> AttentionMask:
  """Masks for T new tokens written at `cache_index` after a cache.

  Args:
    new_mask_BT: 1 for real new tokens, 0 for padding.
    cache_index: the slot of the first new token.
    past_key_mask_BS: 1 for real tokens among the S cache slots (only the
      slots before `cache_index` are read), or None without a cache.
  """
  T = new_mask_BT.shape[1]
  t = jnp.arange(T)
  self_diff = t[:, None] - t[None, :]
  self_mask = (self_diff >= 0)[None] & new_mask_BT.astype(bool)[:, None, :]
  if past_key_mask_BS is None:
    return AttentionMask(self_mask, self_diff)
  slots = jnp.arange(past_key_mask_BS.shape[1])
  past_diff = (cache_index + t)[:, None] - slots[None, :]
  past_mask = ((slots < cache_index)[None, None, :]
               & past_key_mask_BS.astype(bool)[:, None, :])
  return AttentionMask(self_mask, self_diff, past_mask, past_diff)


class Decoder(nn.Module):
  """Decoder-only LM.

  Call with tokens [B, T], positions [B, T], an `AttentionMask`, and
  optionally a KV cache of earlier tokens (read only). Returns (logits
  [B, T, V] float32, new_kv) where new_kv holds the T tokens' keys and values
  ([layers, B, kv_heads, T, head_dim]) for `update_cache`. With
  `return_hidden`, the final normed hidden states replace the logits so that
  callers can project only the positions they need (`logits_from_hidden`).
  With `kernels` (`pack_for_decode`), a one-token step (its matmuls and its
  attention) runs on the CPU decode kernels; longer inputs ignore them.
  """
  config: ModelConfig

  def setup(self):
    c = self.config
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vocab", "embed")),
        (c.vocab_size, c.hidden_size), _dtype(c.param_dtype))
    block = Block
    if c.remat != "none":
      # "dots": projections are saved, attention scores (batched dots) and
      # elementwise work are recomputed.
      policy = (None if c.remat == "full"
                else jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
      block = nn.remat(block, prevent_cse=False, policy=policy)
    self.layers = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=c.num_layers,
        unroll=1 if c.scan_layers else c.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(c, name="layers")
    self.final_norm = RMSNorm(c.rms_norm_eps, c.norm_offset, name="final_norm")
    if not c.tie_embeddings:
      self.lm_head = self.param(
          "lm_head", nn.with_logical_partitioning(
              nn.initializers.normal(0.02), ("embed", "vocab")),
          (c.hidden_size, c.vocab_size), _dtype(c.param_dtype))

  def __call__(self, tokens_BT, positions_BT, mask: AttentionMask,
               cache=None, return_hidden=False,
               kernels: CpuDecode | None = None):
    c = self.config
    dtype = _dtype(c.dtype)
    x = jnp.take(self.embedding, tokens_BT, axis=0).astype(dtype)
    if c.embed_scale:
      x = x * jnp.asarray(c.hidden_size ** 0.5, dtype)
    x = sharding.constrain(x, ("batch", "seq", None))
    windows = jnp.asarray([GLOBAL_WINDOW if w is None else w
                           for w in c.layer_windows()], jnp.int32)
    past = None if cache is None else (cache["k"], cache["v"])
    if tokens_BT.shape[1] > 1:
      # Prefill-shaped work is compute-bound: XLA's dots. The kernels stream
      # the weights once for a few rows, and would read them again per rows.
      kernels = None
    if kernels is not None and cache is not None:
      # Decode attention reads the stacked cache itself: no per-layer slice.
      kernels = dataclasses.replace(kernels, cache=cache)
      past = None
    layer_ids = jnp.arange(c.num_layers, dtype=jnp.int32)
    x, (k, v) = self.layers(x, (windows, past, layer_ids), positions_BT, mask,
                            kernels)
    x = self.final_norm(x)
    new_kv = {"k": k, "v": v}
    if return_hidden:
      return x, new_kv
    return self.logits_from_hidden(x, kernels), new_kv

  def logits_from_hidden(self, x_BTD, kernels: CpuDecode | None = None):
    """Output projection in float32 (with Gemma's final soft-capping)."""
    c = self.config
    dtype = _dtype(c.dtype)
    if kernels is not None:
      logits = kernels.matmul("lm_head", x_BTD)
    elif c.tie_embeddings:
      logits = jnp.einsum("btd,vd->btv", x_BTD, self.embedding.astype(dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = jnp.einsum("btd,dv->btv", x_BTD, self.lm_head.astype(dtype),
                          preferred_element_type=jnp.float32)
    if c.final_logit_softcap:
      cap = c.final_logit_softcap
      logits = jnp.tanh(logits / cap) * cap
    return sharding.constrain(logits, ("batch", "seq", "vocab"))


def positions_from_mask(attention_mask_BT: jax.Array) -> jax.Array:
  """Positions counting real tokens only: left padding does not shift them."""
  return jnp.maximum(jnp.cumsum(attention_mask_BT, axis=-1) - 1, 0)


def init_cache(config: ModelConfig, batch: int, cache_len: int,
               dtype=None) -> dict[str, jax.Array]:
  """An empty KV cache: {"k", "v"} of [layers, B, kv_heads, cache_len, Dh]."""
  shape = (config.num_layers, batch, config.num_kv_heads, cache_len,
           config.head_dim)
  dtype = dtype or _dtype(config.dtype)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


CACHE_LOGICAL_AXES = ("layers", "batch", "kv_heads", "seq", "head_dim")


def update_cache(cache, new_kv, index):
  """Writes the new keys/values ([layers, B, K, T, Dh]) at slot `index`."""
  return {name: jax.lax.dynamic_update_slice(
      cache[name], new_kv[name].astype(cache[name].dtype),
      (0, 0, 0, index, 0)) for name in ("k", "v")}


@functools.partial(jax.jit, static_argnums=0)
def forward(config: ModelConfig, params, tokens, attention_mask):
  """Full forward without cache.

  Args:
    config: the model's `ModelConfig`.
    params: the parameter pytree (`{"params": ...}` or its inner dict).
    tokens: [B, T] int token ids, left-padded.
    attention_mask: [B, T], 1 for real tokens and 0 for left padding.

  Returns:
    logits [B, T, V] float32. Rows at padding positions are meaningless.
  """
  tokens = jnp.asarray(tokens)
  attention_mask = jnp.asarray(attention_mask)
  positions = positions_from_mask(attention_mask)
  mask = make_attention_mask(attention_mask)
  logits, _ = Decoder(config).apply(as_variables(params), tokens, positions,
                                    mask)
  return logits


def as_variables(params):
  """Accepts params with or without the top-level {"params": ...} wrapper."""
  if isinstance(params, dict) and set(params) == {"params"}:
    return params
  return {"params": params}


def abstract_params(config: ModelConfig):
  """(abstract param shapes, logical PartitionSpecs), without allocating."""
  model = Decoder(config)
  T = 2
  def init():
    tokens = jnp.zeros((1, T), jnp.int32)
    mask = make_attention_mask(jnp.ones((1, T), jnp.int32))
    return model.init(jax.random.key(0), tokens, jnp.zeros((1, T), jnp.int32),
                      mask)["params"]
  boxed = jax.eval_shape(init)
  logical = nn.get_partition_spec(boxed)
  return nn.meta.unbox(boxed), logical


def init_params(config: ModelConfig, seed: int = 0):
  """Random parameters (unboxed), for tests and from-scratch runs."""
  model = Decoder(config)
  tokens = jnp.zeros((1, 2), jnp.int32)
  mask = make_attention_mask(jnp.ones((1, 2), jnp.int32))
  variables = jax.jit(model.init)(jax.random.key(seed), tokens,
                                  jnp.zeros((1, 2), jnp.int32), mask)
  return nn.meta.unbox(variables)["params"]


def count_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
