"""Log-likelihoods of continuations, computing each shared context once.

Multiple-choice evaluation and the rubric judge both ask: given a context,
how likely is each of a few continuations? Scoring every (context, option)
pair as its own sequence recomputes the context once per option. Here

1. the longest token prefix shared by *all* contexts of a call (a few-shot
   primer, a chat template's system turn, a rubric) runs once, batch 1;
2. each batch of contexts runs once on top of that prefix's KV cache;
3. all options of a context run together, back to back in one packed row
   attending to the context's cache, each option seeing only its own earlier
   tokens (a block-diagonal causal mask), with positions continuing the
   context's.

The log-likelihood of an option is the sum of its tokens' log-probs: the
first from the context's last logits, the rest from the packed pass (which
holds every option token but the last, each predicting its successor).
Options of one token (score digits) need no packed pass at all. Only the
logits of the tokens scored are reduced: `logit - logsumexp`, never a full
log-softmax table.

Items are sorted by length and each batch padded to its own length bucket
(powers of two), with a fixed batch size, so a run compiles a handful of
programs and computes little padding. With a mesh, each batch is split over
the data-parallel axes and the model runs sharded (the params as
`load_model(..., mesh=mesh)` placed them). `suffix_logprobs` runs short
suffixes packed the same way and reads a few candidate next tokens after
each (several questions about one text). `option_logliks_full` is the
plain one-sequence-per-option computation, for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from hmx_jax import sampling, sharding
from hmx_jax.errors import UserError
from hmx_jax.models import decoder
from hmx_jax.models.config import ModelConfig


def _pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def data_parallel_size(mesh, rules=sharding.DEFAULT_RULES) -> int:
  """How many ways a batch is split over `mesh` (1 without a mesh)."""
  if mesh is None:
    return 1
  axes = dict(rules).get("batch") or ()
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[a] for a in axes)


def on_mesh(mesh, rules=sharding.DEFAULT_RULES):
  """`sharding.use_mesh(mesh, rules)`, or nothing without a mesh."""
  if mesh is None:
    return contextlib.nullcontext()
  return sharding.use_mesh(mesh, rules)


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
  """Length of the longest token prefix all sequences share."""
  if not seqs:
    return 0
  first = seqs[0]
  n = min(len(s) for s in seqs)
  for seq in seqs[1:]:
    i = 0
    while i < n and seq[i] == first[i]:
      i += 1
    n = i
  return n


def _apply(config, params, tokens, positions, mask, cache=None):
  return decoder.Decoder(config).apply(
      decoder.as_variables(params), tokens, positions, mask, cache=cache,
      return_hidden=True)


def _logits(config, params, hidden):
  return decoder.Decoder(config).apply(
      decoder.as_variables(params), hidden,
      method=decoder.Decoder.logits_from_hidden)


@functools.partial(jax.jit, static_argnums=0)
def _prefix_cache(config: ModelConfig, params, tokens_1P, mask_1P):
  """KV cache [layers, 1, K, P, Dh] of the shared prefix (left-padded)."""
  positions = decoder.positions_from_mask(mask_1P)
  _, kv = _apply(config, params, tokens_1P, positions,
                 decoder.make_attention_mask(mask_1P))
  return kv


def _broadcast_cache(kv, batch):
  return {k: jnp.broadcast_to(v, v.shape[:1] + (batch,) + v.shape[2:])
          for k, v in kv.items()}


@functools.partial(jax.jit, static_argnums=0)
def _score_batch(config: ModelConfig, params, prefix_kv, prefix_mask_1P,
                 ctx_BC, ctx_mask_BC, first_BN, packed_BR, segment_BR,
                 offset_BR, target_BRK):
  """Log-probs of options' first tokens [B, N] and of the tokens that follow
  the packed ones [B, R, K].

  The R packed tokens of a row are its options back to back: `segment_BR`
  names the option of each (-1 for padding), `offset_BR` its index within
  the option, `target_BRK` the K candidate next tokens read at each (an
  option's own next token and -1s, or -1s where nothing is read).
  """
  B, C = ctx_BC.shape
  if prefix_kv is None:
    prefix_len = jnp.zeros((), jnp.int32)
    past, past_mask, past_pos = None, None, None
  else:
    past_mask = jnp.broadcast_to(prefix_mask_1P,
                                 (B,) + prefix_mask_1P.shape[1:])
    prefix_len = prefix_mask_1P.sum()
    past = _broadcast_cache(prefix_kv, B)
    past_pos = decoder.positions_from_mask(past_mask)

  # 1. Contexts, on top of the prefix. Positions continue the prefix's.
  ctx_pos = prefix_len + decoder.positions_from_mask(ctx_mask_BC)
  ctx_mask = _mask(ctx_mask_BC.astype(bool)[:, None, :]
                   & jnp.tril(jnp.ones((C, C), bool))[None],
                   ctx_pos, ctx_pos, past_mask, past_pos)
  hidden, ctx_kv = _apply(config, params, ctx_BC, ctx_pos, ctx_mask, past)
  first = _token_logprobs(config, params, hidden[:, -1:],
                          first_BN[:, None, :])[:, 0]
  if packed_BR.shape[1] == 0:
    return first, jnp.zeros(target_BRK.shape, jnp.float32)

  # 2. All options of a context packed in one row, each seeing the context
  # and its own earlier tokens.
  ctx_len = ctx_mask_BC.sum(axis=1)
  opt_pos = (prefix_len + ctx_len)[:, None] + offset_BR
  self_allowed = ((segment_BR[:, :, None] == segment_BR[:, None, :])
                  & (offset_BR[:, None, :] <= offset_BR[:, :, None])
                  & (segment_BR >= 0)[:, None, :])
  keys = ctx_kv if past is None else {
      k: jnp.concatenate([past[k], ctx_kv[k]], axis=3) for k in ctx_kv}
  key_mask = ctx_mask_BC.astype(bool)
  key_pos = ctx_pos
  if past is not None:
    key_mask = jnp.concatenate([past_mask.astype(bool), key_mask], axis=1)
    key_pos = jnp.concatenate([past_pos, ctx_pos], axis=1)
  opt_attn = _mask(self_allowed, opt_pos, opt_pos, key_mask, key_pos)
  hidden, _ = _apply(config, params, packed_BR, opt_pos, opt_attn, keys)
  nxt = _token_logprobs(config, params, hidden, target_BRK)
  return first, jnp.where(target_BRK >= 0, nxt, 0.0)


def _token_logprobs(config, params, hidden_BTD, tokens_BTK):
  """log p(token) [B, T, K] at each position, for K candidate tokens each."""
  logits = _logits(config, params, hidden_BTD)
  picked = jnp.take_along_axis(logits, jnp.maximum(tokens_BTK, 0), axis=-1)
  return picked - jax.nn.logsumexp(logits, axis=-1, keepdims=True)


def _mask(self_allowed_BTT, q_pos_BT, k_pos_BT, past_mask_BS, past_pos_BS):
  """An `AttentionMask` whose window distances are position differences."""
  self_diff = q_pos_BT[:, :, None] - k_pos_BT[:, None, :]
  if past_mask_BS is None:
    return decoder.AttentionMask(self_allowed_BTT, self_diff)
  T = q_pos_BT.shape[1]
  past_allowed = jnp.broadcast_to(past_mask_BS.astype(bool)[:, None, :],
                                  (past_mask_BS.shape[0], T,
                                   past_mask_BS.shape[1]))
  past_diff = q_pos_BT[:, :, None] - past_pos_BS[:, None, :]
  return decoder.AttentionMask(self_allowed_BTT, self_diff, past_allowed,
                               past_diff)


def _check(contexts, options):
  if len(contexts) != len(options):
    raise ValueError(f"{len(contexts)} contexts but {len(options)} option "
                     "lists")
  for i, (ctx, opts) in enumerate(zip(contexts, options)):
    if not len(ctx):
      raise UserError(f"item {i}: empty context")
    if not len(opts):
      raise UserError(f"item {i}: no options")
    for j, opt in enumerate(opts):
      if not len(opt):
        raise UserError(f"item {i}, option {j}: empty continuation")


def option_logliks(config: ModelConfig, params,
                   contexts: Sequence[Sequence[int]],
                   options: Sequence[Sequence[Sequence[int]]], *,
                   batch_size: int = 8, share_prefix: bool = True,
                   pad_id: int = 0, progress=None, mesh=None,
                   rules=sharding.DEFAULT_RULES) -> list[np.ndarray]:
  """Log-likelihood of every option as a continuation of its context.

  Args:
    config, params: the model.
    contexts: per item, the context token ids.
    options: per item, a list of continuation token-id lists.
    batch_size: items per forward pass (a fixed shape: the last batch is
      padded).
    share_prefix: compute the prefix common to all contexts once.
    pad_id: the padding token id.
    progress: optional callable(n_items_done) called after each batch.
    mesh: run sharded over this mesh, each batch split over its
      data-parallel axes (`batch_size` must be a multiple of their size).
    rules: logical-axis rules for the mesh.

  Returns:
    Per item, float64 [num_options]: the sum of the option tokens' log-probs.
  """
  _check(contexts, options)
  if not contexts:
    return []
  if batch_size % data_parallel_size(mesh, rules):
    raise ValueError(f"batch_size={batch_size} is not a multiple of the "
                     f"mesh's data-parallel size "
                     f"{data_parallel_size(mesh, rules)}")
  with on_mesh(mesh, rules):
    return _packed_scores(config, params, contexts, options, None,
                          batch_size, share_prefix, pad_id, progress, mesh,
                          rules)


def suffix_logprobs(config: ModelConfig, params,
                    contexts: Sequence[Sequence[int]],
                    suffixes: Sequence[Sequence[Sequence[int]]],
                    candidates: Sequence[int], *, batch_size: int = 8,
                    pad_id: int = 0, mesh=None,
                    rules=sharding.DEFAULT_RULES) -> list[np.ndarray]:
  """Log-probs of candidate next tokens after each suffix of each context.

  One pass per context: its suffixes run packed on its cache, each seeing
  the context and itself only, as `option_logliks` runs options. This reads
  several questions about one text (the rubric's criteria about one answer)
  for the cost of the text once and a few tokens per question.

  Args:
    config, params, batch_size, pad_id, mesh, rules: as `option_logliks`.
    contexts: per item, the context token ids.
    suffixes: per item, token-id lists that each continue the context.
    candidates: K token ids read after every suffix.

  Returns:
    Per item, float64 [num_suffixes, K]: log p(candidate | context + suffix).
  """
  _check(contexts, suffixes)
  if not contexts:
    return []
  if not candidates:
    raise ValueError("no candidate tokens")
  if batch_size % data_parallel_size(mesh, rules):
    raise ValueError(f"batch_size={batch_size} is not a multiple of the "
                     f"mesh's data-parallel size "
                     f"{data_parallel_size(mesh, rules)}")
  with on_mesh(mesh, rules):
    return _packed_scores(config, params, contexts, suffixes,
                          np.asarray(candidates, np.int32), batch_size, True,
                          pad_id, None, mesh, rules)


def _packed_scores(config, params, contexts, options, candidates,
                   batch_size, share_prefix, pad_id, progress, mesh, rules):
  """`option_logliks` (candidates None) or `suffix_logprobs` (candidates
  [K]) inside its mesh context."""
  reads = candidates is not None
  prefix_len = 0
  if share_prefix and len(contexts) > 1:
    # Every context keeps at least one token of its own.
    prefix_len = min(common_prefix_length(contexts),
                     min(len(c) for c in contexts) - 1)
  prefix_kv = prefix_mask = None
  if prefix_len > 0:
    tokens, prefix_mask = sampling.pad_prompts(
        [contexts[0][:prefix_len]], sampling.bucket_length(prefix_len), pad_id)
    prefix_kv = _prefix_cache(config, params, tokens, prefix_mask)
  rest = [c[prefix_len:] for c in contexts]
  # Packed: every option token but the last (each predicts the next), or
  # every suffix token (the last one reads the candidates).
  tails = [sum(len(t) - (not reads) for t in o) for o in options]
  n_opt = 1 if reads else _pow2(max(len(o) for o in options))
  width = len(candidates) if reads else 1
  # Longest first, each batch padded to its own bucket: little padding, and
  # a few programs (one per bucket pair), the biggest compiled first.
  order = sorted(range(len(contexts)),
                 key=lambda i: (-len(rest[i]), -tails[i]))
  out = [None] * len(contexts)
  for start in range(0, len(order), batch_size):
    real = order[start:start + batch_size]
    idx = real + [real[-1]] * (batch_size - len(real))
    ctx_len = sampling.bucket_length(max(len(rest[i]) for i in real))
    tail = max(tails[i] for i in real)
    packed_len = sampling.bucket_length(tail) if tail else 0
    ctx, ctx_mask = sampling.pad_prompts([rest[i] for i in idx], ctx_len,
                                         pad_id)
    first = np.zeros((batch_size, n_opt), np.int32)
    packed = np.full((batch_size, packed_len), pad_id, np.int32)
    segment = np.full((batch_size, packed_len), -1, np.int32)
    offset = np.zeros((batch_size, packed_len), np.int32)
    target = np.full((batch_size, packed_len, width), -1, np.int32)
    last = np.zeros((batch_size, max(len(o) for o in options)), np.int64)
    for b, i in enumerate(idx):
      r = 0
      for j, tokens in enumerate(options[i]):
        if reads:
          n = len(tokens)
          packed[b, r:r + n] = tokens
          target[b, r + n - 1] = candidates
          last[b, j] = r + n - 1
        else:
          first[b, j] = tokens[0]
          n = len(tokens) - 1
          packed[b, r:r + n] = tokens[:-1]
          target[b, r:r + n, 0] = tokens[1:]
        segment[b, r:r + n] = j
        offset[b, r:r + n] = np.arange(n)
        r += n
    # Every process holds the whole batch and places its own rows.
    batch = sharding.put_batch(
        (ctx, ctx_mask, first, packed, segment, offset, target), mesh, rules)
    first_lp, next_lp = sharding.to_host(_score_batch(
        config, params, prefix_kv, prefix_mask, *batch))
    first_lp = np.asarray(first_lp, np.float64)
    next_lp = np.asarray(next_lp, np.float64)
    for b, i in enumerate(real):
      n = len(options[i])
      if reads:
        out[i] = next_lp[b, last[b, :n]]
        continue
      counted = segment[b] >= 0
      rest_sum = np.bincount(segment[b][counted],
                             weights=next_lp[b, counted, 0], minlength=n)[:n]
      out[i] = first_lp[b, :n] + rest_sum
    if progress is not None:
      progress(len(real))
  return out


@functools.partial(jax.jit, static_argnums=0)
def _sequence_logliks(config: ModelConfig, params, tokens_BT, mask_BT,
                      target_mask_BT):
  positions = decoder.positions_from_mask(mask_BT)
  hidden, _ = _apply(config, params, tokens_BT, positions,
                     decoder.make_attention_mask(mask_BT))
  nxt = _token_logprobs(config, params, hidden[:, :-1],
                         tokens_BT[:, 1:, None])[..., 0]
  return (nxt * target_mask_BT[:, 1:]).sum(axis=-1)


def option_logliks_full(config: ModelConfig, params,
                        contexts: Sequence[Sequence[int]],
                        options: Sequence[Sequence[Sequence[int]]], *,
                        batch_size: int = 8, pad_id: int = 0
                        ) -> list[np.ndarray]:
  """Same as `option_logliks`, scoring each context + option as one sequence.

  No computation is shared: the reference the cached path is checked and
  benchmarked against.
  """
  _check(contexts, options)
  rows = [(list(c) + list(o), len(o)) for c, opts in zip(contexts, options)
          for o in opts]
  if not rows:
    return []
  length = sampling.bucket_length(max(len(r) for r, _ in rows))
  flat = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    real = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - real)
    tokens, mask = sampling.pad_prompts([r for r, _ in chunk], length, pad_id)
    target = np.zeros_like(mask)
    for b, (_, n) in enumerate(chunk):
      target[b, length - n:] = 1
    flat.extend(np.asarray(_sequence_logliks(config, params, tokens, mask,
                                             target), np.float64)[:real])
  out, k = [], 0
  for opts in options:
    out.append(np.asarray(flat[k:k + len(opts)], np.float64))
    k += len(opts)
  return out
