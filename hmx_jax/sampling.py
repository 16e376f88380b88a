"""KV-cache sampler: prefill and decode in one jitted program.

`generate` left-pads a batch of prompts into a length bucket (or to a fixed
`prompt_len`, so that every call has the same shapes), then runs one
jitted program per (batch size, bucket, max_new_tokens, sampling settings):
a prefill over the prompts writes the KV cache, and a `jax.lax.while_loop`
decodes one token per iteration until every sequence has stopped or
`max_new_tokens` is reached. The cache is a pytree carried through the loop.

On CPU, with float32 weights, prefill and decode run their matmuls, and the
decode steps their attention, on the kernels of `hmx_jax.kernels.cpu`: the
weights are packed once per set of params (kept while those params live)
and read in place, at the machine's memory bandwidth.

Log-probs are those of the distribution the policy samples from before
top-k / top-p filtering: `log_softmax(logits / temperature)`, or
`log_softmax(logits)` for greedy decoding (temperature 0), as in TRL's GRPO.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import weakref

import jax
import jax.numpy as jnp
from jax.experimental import io_callback
import numpy as np

from hmx_jax import sharding
from hmx_jax.errors import UserError
from hmx_jax.kernels import cpu as kernels_cpu
from hmx_jax.models import decoder
from hmx_jax.models.config import ModelConfig

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Static sampling settings (part of the jit cache key)."""
  max_new_tokens: int
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = ()

  def validate(self):
    if self.max_new_tokens < 1:
      raise UserError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
    if self.temperature < 0:
      raise UserError(f"temperature={self.temperature} must be >= 0")
    if self.top_k < 0:
      raise UserError(f"top_k={self.top_k} must be >= 0 (0 disables it)")
    if not 0.0 < self.top_p <= 1.0:
      raise UserError(f"top_p={self.top_p} must be in (0, 1]")


@dataclasses.dataclass
class SampleOutput:
  """What `generate` returns; arrays are numpy, one row per prompt.

  Attributes:
    prompt_tokens: [B, P] left-padded prompts (P is the length bucket).
    prompt_mask: [B, P] 1 for real prompt tokens.
    tokens: [B, N] sampled completion tokens (pad after a stop).
    logprobs: [B, N] the policy's log-prob of each sampled token.
    mask: [B, N] 1 for completion tokens, the stop token included.
    finish_reasons: "stop" or "length" per sequence.
  """
  prompt_tokens: np.ndarray
  prompt_mask: np.ndarray
  tokens: np.ndarray
  logprobs: np.ndarray
  mask: np.ndarray
  finish_reasons: list[str]

  def completions(self) -> list[list[int]]:
    """Completion token ids per sequence, padding removed."""
    return [row[m.astype(bool)].tolist() for row, m in zip(self.tokens,
                                                           self.mask)]


def bucket_length(n: int, minimum: int = 16, half_steps: bool = False
                  ) -> int:
  """Powers of two up to 512, then multiples of 512: few programs, <2x pad.

  With `half_steps`, 1.5x powers of two (24, 48, 96, ...) are buckets too:
  twice the programs, at most 1.5x padding.
  """
  n = max(n, minimum)
  if n > 512:
    return -(-n // 512) * 512
  power = 1 << (n - 1).bit_length()
  if half_steps and n <= power * 3 // 4:
    return power * 3 // 4
  return power


def pad_prompts(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to `length`: (tokens [B, length], mask)."""
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    if len(p):
      tokens[i, length - len(p):] = p
      mask[i, length - len(p):] = 1
  return tokens, mask


def filter_logits(logits_BV: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Sets logits outside the top-k / nucleus (top-p) set to -inf.

  The nucleus is the smallest set of most likely tokens whose probability
  reaches `top_p`; the most likely token is always kept.
  """
  if top_k:
    kth = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
  if top_p < 1.0:
    sorted_desc = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Mass strictly before each sorted token: keep while it is < top_p.
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = before < top_p
    threshold = jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1,
                        keepdims=True)
    logits_BV = jnp.where(logits_BV < threshold, -jnp.inf, logits_BV)
  return logits_BV


def sample_token(logits_BV: jax.Array, rng: jax.Array, s: SamplingConfig
                 ) -> tuple[jax.Array, jax.Array]:
  """Samples one token per row; returns (tokens [B], policy log-probs [B]).

  Built from plain max / sum reductions: over a vocabulary-sized row these
  are several times cheaper on CPU than `argmax` and `log_softmax`.
  """
  scaled = logits_BV if s.temperature == 0.0 else logits_BV / s.temperature
  top = jnp.max(scaled, axis=-1, keepdims=True)
  log_norm = top[:, 0] + jnp.log(jnp.sum(jnp.exp(scaled - top), axis=-1))
  if s.temperature == 0.0:
    # The first index of the maximum, as `jnp.argmax` (float indices are
    # exact below 2**24).
    index = jax.lax.broadcasted_iota(jnp.float32, scaled.shape, 1)
    token = jnp.min(jnp.where(scaled == top, index, jnp.inf), axis=-1)
    return token.astype(jnp.int32), top[:, 0] - log_norm
  token = jax.random.categorical(rng, filter_logits(scaled, s.top_k, s.top_p))
  picked = jnp.take_along_axis(scaled, token[:, None], axis=-1)[:, 0]
  return token, picked - log_norm


@dataclasses.dataclass(frozen=True)
class _Stream:
  """Hashable wrapper so a host callback can be a static jit argument."""
  fn: Callable | None


class _PackedWeights:
  """The last `decoder.pack_for_decode` result, kept while its params live.

  Evaluation and chat call `generate` many times with the same params, so
  they pack once; a training step's new params pack once per rollout. Only
  one packed copy is held at a time.
  """

  def __init__(self):
    self._key = None
    self._packed = None

  def get(self, config: ModelConfig, params) -> decoder.CpuDecode:
    leaves = jax.tree.leaves(params)
    if (self._key is not None and self._key[0] == config
        and len(self._key[1]) == len(leaves)
        and all(ref() is leaf for ref, leaf in zip(self._key[1], leaves))):
      return self._packed
    self._key = self._packed = None  # Free the old copy first.
    self._packed = _pack(config, params)
    self._key = (config, [weakref.ref(leaf) for leaf in leaves])
    return self._packed


_pack = jax.jit(decoder.pack_for_decode, static_argnums=0)
_packed_weights = _PackedWeights()


def pack_for_cpu(config: ModelConfig, params) -> decoder.CpuDecode:
  """The weights packed for the CPU decode kernels, made once per params.

  `generate` calls this itself; calling it ahead keeps the packing (a copy
  of the weights) out of the first `generate` call.
  """
  if not kernels_cpu.available():
    raise UserError("the CPU decode kernels could not be built (see the "
                    "warning above)")
  return _packed_weights.get(config, params)


def _use_cpu_kernels(config: ModelConfig, params, mesh) -> bool:
  """The default of `generate(cpu_kernels=None)`."""
  if mesh is not None or not decoder.can_pack_for_decode(config):
    return False
  for leaf in jax.tree.leaves(params):
    if not isinstance(leaf, jax.Array):  # Host arrays go to the default.
      if jax.default_backend() != "cpu":
        return False
      continue
    devices = leaf.devices()
    if len(devices) != 1 or next(iter(devices)).platform != "cpu":
      return False
  return kernels_cpu.available()


def prefill(config: ModelConfig, params, prompt_BP, prompt_mask_BP,
            cache_len: int, kernels: decoder.CpuDecode | None = None):
  """Runs the (left-padded) prompts: logits of each one's next token [B, V]
  and a KV cache of `cache_len` slots with the prompts written."""
  model = decoder.Decoder(config)
  variables = decoder.as_variables(params)
  cache = decoder.init_cache(config, prompt_BP.shape[0], cache_len)
  cache = jax.tree.map(
      lambda x: sharding.constrain(x, decoder.CACHE_LOGICAL_AXES), cache)
  hidden, new_kv = model.apply(
      variables, prompt_BP, decoder.positions_from_mask(prompt_mask_BP),
      decoder.make_attention_mask(prompt_mask_BP), return_hidden=True,
      kernels=kernels)
  logits = model.apply(variables, hidden[:, -1:], kernels,
                       method=decoder.Decoder.logits_from_hidden)[:, 0]
  return logits, decoder.update_cache(cache, new_kv, 0)


def decode_step(config: ModelConfig, params, cache, key_mask_BS, last_B,
                positions_B1, slot, kernels: decoder.CpuDecode | None = None):
  """Feeds each row's last token at cache slot `slot` (its position
  `positions_B1`): logits of the next token [B, V] and the updated cache."""
  model = decoder.Decoder(config)
  mask = decoder.make_attention_mask(
      jnp.ones((last_B.shape[0], 1), jnp.int32), slot, key_mask_BS)
  logits, new_kv = model.apply(decoder.as_variables(params), last_B[:, None],
                               positions_B1, mask, cache, kernels=kernels)
  return logits[:, 0], decoder.update_cache(cache, new_kv, slot)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sample(config: ModelConfig, s: SamplingConfig, stream: _Stream, params,
            kernels: decoder.CpuDecode | None, prompt_BP, prompt_mask_BP,
            rng):
  B, P = prompt_BP.shape
  N = s.max_new_tokens
  # Generated slots are always real keys; causality hides future ones.
  key_mask = jnp.concatenate(
      [prompt_mask_BP, jnp.ones((B, N), prompt_mask_BP.dtype)], axis=1)
  prompt_lengths = jnp.sum(prompt_mask_BP, axis=1)
  logits, cache = prefill(config, params, prompt_BP, prompt_mask_BP, P + N,
                          kernels)
  stop_ids = jnp.asarray(s.stop_ids or (-1,), jnp.int32)

  def emit(state, logits_BV, rng):
    step, tokens, logprobs, done, stopped = (
        state["step"], state["tokens"], state["logprobs"], state["done"],
        state["stopped"])
    token, logp = sample_token(logits_BV, rng, s)
    token = jnp.where(done, 0, token).astype(jnp.int32)
    is_stop = jnp.isin(token, stop_ids) & ~done
    if stream.fn is not None:
      io_callback(stream.fn, None, step, token, done,
                                   ordered=True)
    return {
        **state,
        "step": step + 1,
        "tokens": tokens.at[:, step].set(token),
        "logprobs": logprobs.at[:, step].set(jnp.where(done, 0.0, logp)),
        "mask": state["mask"].at[:, step].set(~done),
        "done": done | is_stop,
        "stopped": stopped | is_stop,
        "last": token,
    }

  rng, first_rng = jax.random.split(rng)
  state = {
      "step": jnp.int32(0),
      "tokens": jnp.zeros((B, N), jnp.int32),
      "logprobs": jnp.zeros((B, N), jnp.float32),
      "mask": jnp.zeros((B, N), bool),
      "done": jnp.zeros((B,), bool),
      "stopped": jnp.zeros((B,), bool),
      "last": jnp.zeros((B,), jnp.int32),
      "cache": cache,
      "rng": rng,
  }
  state = emit(state, logits, first_rng)

  def cond(state):
    return (state["step"] < N) & ~jnp.all(state["done"])

  def body(state):
    step = state["step"]
    slot = P + step - 1  # The slot of the token fed in this iteration.
    positions = (prompt_lengths + step - 1)[:, None]
    logits, cache = decode_step(config, params, state["cache"], key_mask,
                                state["last"], positions, slot, kernels)
    rng, step_rng = jax.random.split(state["rng"])
    return emit({**state, "cache": cache, "rng": rng}, logits, step_rng)

  state = jax.lax.while_loop(cond, body, state)
  return state["tokens"], state["logprobs"], state["mask"], state["stopped"]


def generate(config: ModelConfig, params, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0,
             stop_ids: Sequence[int] | None = None, pad_id: int = 0,
             max_total_len: int | None = None,
             prompt_len: int | None = None, mesh=None,
             rules=sharding.DEFAULT_RULES,
             on_tokens: Callable | None = None,
             cpu_kernels: bool | None = None) -> SampleOutput:
  """Samples completions for a batch of prompts.

  Args:
    config: the model config.
    params: model parameters (placed as `load_model` placed them).
    prompts: token-id lists, one per sequence, of any lengths.
    max_new_tokens: completion length limit.
    temperature: 0 is greedy decoding.
    top_k: keep the k most likely tokens (0: all).
    top_p: nucleus sampling mass in (0, 1].
    seed: PRNG seed; the same seed gives the same output.
    stop_ids: tokens that end a sequence (default: the config's EOS ids).
    pad_id: token id used for padding.
    max_total_len: prompt + completion limit (default: the model's
      `max_position_embeddings`).
    prompt_len: left-pad every prompt to exactly this many tokens instead
      of a length bucket: one program for all calls of a run.
    mesh: run sharded over this mesh (batch over data axes).
    rules: logical-axis rules for the mesh.
    on_tokens: host callback `(step, tokens [B], done [B])` per decoded
      step, for streaming.
    cpu_kernels: decode with the packed-weight CPU kernel
      (`hmx_jax.kernels.cpu`). The default uses it when the params are
      float32 on CPU, unsharded, and the kernel builds.

  Returns:
    A `SampleOutput`.

  Raises:
    UserError: empty prompt, prompt too long for the cache or for
      `prompt_len`, bad settings.
  """
  if not prompts:
    raise UserError("generate: no prompts given")
  s = SamplingConfig(
      max_new_tokens=int(max_new_tokens), temperature=float(temperature),
      top_k=int(top_k), top_p=float(top_p),
      stop_ids=tuple(int(i) for i in (
          config.eos_token_ids if stop_ids is None else stop_ids)))
  s.validate()
  limit = max_total_len or config.max_position_embeddings
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise UserError(f"prompt {i} is empty")
    if len(p) + s.max_new_tokens > limit:
      raise UserError(
          f"prompt {i} has {len(p)} tokens; with max_new_tokens="
          f"{s.max_new_tokens} it exceeds the cache of {limit} tokens")
  if prompt_len:
    if prompt_len + s.max_new_tokens > limit:
      raise UserError(f"prompt_len={prompt_len} with max_new_tokens="
                      f"{s.max_new_tokens} exceeds the cache of {limit} "
                      "tokens")
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    if len(prompts[longest]) > prompt_len:
      raise UserError(f"prompt {longest} has {len(prompts[longest])} tokens, "
                      f"more than prompt_len={prompt_len}")
    length = prompt_len
  else:
    # Prefill runs every padded slot, so prompts get the finer buckets.
    length = min(bucket_length(max(len(p) for p in prompts), half_steps=True),
                 limit - s.max_new_tokens)
  prompt_BP, prompt_mask_BP = pad_prompts(prompts, length, pad_id)
  rng = jax.random.key(seed)
  if cpu_kernels is None:
    cpu_kernels = _use_cpu_kernels(config, params, mesh)
  elif cpu_kernels and not kernels_cpu.available():
    raise UserError("cpu_kernels=True but the CPU decode kernels could not "
                    "be built (see the warning above)")
  kernels = pack_for_cpu(config, params) if cpu_kernels else None
  args = (config, s, _Stream(on_tokens), params, kernels)
  if mesh is None:
    out = _sample(*args, prompt_BP, prompt_mask_BP, rng)
  else:
    with sharding.use_mesh(mesh, rules):
      batch = sharding.batch_sharding(mesh, rules)
      out = _sample(*args, jax.device_put(prompt_BP, batch),
                    jax.device_put(prompt_mask_BP, batch), rng)
  # Whole on every process, also when the batch spans several.
  tokens, logprobs, mask, stopped = sharding.to_host(out)
  return SampleOutput(
      prompt_tokens=prompt_BP, prompt_mask=prompt_mask_BP,
      tokens=np.asarray(tokens), logprobs=np.asarray(logprobs),
      mask=np.asarray(mask, np.int32),
      finish_reasons=[FINISH_STOP if x else FINISH_LENGTH for x in stopped])


def compiled_programs() -> int:
  """How many sampler programs have been compiled in this process."""
  return _sample._cache_size()
