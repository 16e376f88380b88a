"""The learner: a scored batch of completions -> one update of the train state.

Precision: the master weights and Adam's moments are `model.param_dtype`
(float32); the forward and backward of the update run in
`model.compute_dtype` (each layer's weights cast inside the layer), with
log-probs, the loss and the gradients' accumulation in float32.

Old log-probs, as TRL's GRPO takes them: with one iteration per batch the
ratio is against the detached current log-probs (exactly 1); with more,
against one training-forward pass made before the updates
(`completion_logps`). The sampler's log-probs only measure the
sampler/learner mismatch and, when asked, weight each token by the
truncated importance ratio (TRL's `vllm_importance_sampling_correction`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from hmx_jax.models import decoder
from hmx_jax.models.config import ModelConfig
from hmx_jax.objectives import contrastive, grpo


def completion_logps(config: ModelConfig, params, tokens_BL, mask_BL,
                     prompt_len: int, temperature: float, chunk: int = 64):
  """Per-token log-probs and entropies of the completion part.

  The output projection, log-softmax and entropy run over `chunk`
  completion positions at a time, each chunk recomputed in the backward
  pass, so no [B, N, V] float32 array is ever held whole.

  Args:
    config: the model config (its `dtype` is the compute dtype).
    tokens_BL: prompt (left-padded to `prompt_len`) + completion tokens.
    mask_BL: 1 for real tokens.
    prompt_len: where completions start.
    temperature: logits are divided by it, as in sampling.
    chunk: completion positions per chunk.

  Returns:
    (logps [B, N], entropy [B, N]) float32, with N = L - prompt_len.
  """
  model = decoder.Decoder(config)
  variables = decoder.as_variables(params)
  hidden_BLD, _ = model.apply(variables, tokens_BL,
                              decoder.positions_from_mask(mask_BL),
                              decoder.make_attention_mask(mask_BL),
                              return_hidden=True)
  # The positions that predict completion tokens.
  hidden_BND = hidden_BLD[:, prompt_len - 1:-1]
  targets_BN = tokens_BL[:, prompt_len:]
  B, N, D = hidden_BND.shape
  chunk = max(1, min(chunk, N))
  pad = -N % chunk
  hidden_CBcD = jnp.pad(hidden_BND, ((0, 0), (0, pad), (0, 0))).reshape(
      B, -1, chunk, D).transpose(1, 0, 2, 3)
  targets_CBc = jnp.pad(targets_BN, ((0, 0), (0, pad))).reshape(
      B, -1, chunk).transpose(1, 0, 2)

  @jax.checkpoint
  def one_chunk(hidden_BcD, targets_Bc):
    logits = model.apply(variables, hidden_BcD,
                         method=decoder.Decoder.logits_from_hidden)
    logits = logits.astype(jnp.float32) / temperature
    log_norm = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_Bc[..., None], axis=-1)[..., 0]
    probs = jnp.exp(logits - log_norm[..., None])
    entropy = log_norm - jnp.sum(probs * logits, axis=-1)
    return picked - log_norm, entropy

  logps_CBc, entropy_CBc = jax.lax.map(lambda xs: one_chunk(*xs),
                                       (hidden_CBcD, targets_CBc))
  unchunk = lambda x: x.transpose(1, 0, 2).reshape(B, -1)[:, :N]
  return unchunk(logps_CBc), unchunk(entropy_CBc)


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """Static settings of the policy loss (TRL names)."""
  epsilon: float
  epsilon_high: float
  beta: float
  loss_type: str
  temperature: float
  prompt_len: int
  max_completion_length: int
  micro_batches: int
  logps_chunk: int = 64
  sampler_is_correction: bool = False
  sampler_is_cap: float = 2.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  """What an update changes: the master params and the optimizer state."""
  params: object
  opt_state: object


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup + cosine decay, after global-norm clipping."""
  return optax.chain(
      optax.clip_by_global_norm(c.optim.max_grad_norm),
      optax.adamw(learning_rate_schedule(c), b1=c.optim.b1, b2=c.optim.b2,
                  weight_decay=c.optim.weight_decay))


def learning_rate_schedule(c: ml_collections.ConfigDict):
  total = max(c.train.num_steps * c.grpo.num_iterations, 2)
  warmup = min(c.optim.warmup_steps, total - 1)
  return optax.warmup_cosine_decay_schedule(
      0.0, c.optim.learning_rate, warmup, total,
      end_value=c.optim.learning_rate * c.optim.final_lr_fraction)


def split_micro_batches(batch, micro_batches: int):
  """[B, ...] leaves -> [M, B / M, ...], micro-batch m = rows m, m + M, ...

  Strided, not contiguous: a batch sharded over the data axes holds
  contiguous blocks of rows per device, so every micro-batch takes rows
  from every block and spreads over all data shards.
  """
  return jax.tree.map(
      lambda x: x.reshape((-1, micro_batches) + x.shape[1:]).swapaxes(0, 1),
      batch)


def _reduce_micro_metrics(metrics_M):
  """Micro-batch metrics [M] -> scalars: min / max by name, else the mean."""
  def reduce(name, values):
    if name.endswith(("/max", "_max")):
      return jnp.max(values)
    if name.endswith(("/min", "_min")):
      return jnp.min(values)
    return jnp.mean(values)
  return {k: reduce(k, v) for k, v in metrics_M.items()}


def _accumulate(loss_fn, params, batch, micro_batches: int):
  """(mean loss, mean gradients, metrics) of `loss_fn(params, micro)` over
  the strided micro-batches of `batch`, gradients summed in float32."""
  def one_micro_batch(grads, micro):
    (loss, metrics), micro_grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, micro)
    grads = jax.tree.map(lambda g, m: g + m.astype(jnp.float32), grads,
                         micro_grads)
    return grads, (loss, metrics)

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  grads, (losses, metrics) = jax.lax.scan(
      one_micro_batch, zeros, split_micro_batches(batch, micro_batches))
  grads = jax.tree.map(lambda g, p: (g / micro_batches).astype(p.dtype),
                       grads, params)
  return jnp.mean(losses), grads, _reduce_micro_metrics(metrics)


def loss_and_grads(config: ModelConfig, settings: LossSettings, params, batch):
  """Mean loss and gradients over the batch's micro-batches.

  Args:
    config: the model config of the update (compute dtype).
    settings: the loss settings.
    params: master params.
    batch: "tokens", "mask" [B, L]; "completion_mask", "sampler_logps"
      [B, N]; "advantages" [B]; optional "old_logps" and "ref_logps" [B, N].

  Returns:
    (loss, grads, metrics). Micro-batch losses are averaged, which equals
    the whole batch's loss for grpo (equal micro-batch sizes), dr_grpo (a
    constant denominator) and dapo (the whole batch's token count); for
    bnpo it is the mean of the micro-batches' token means, as TRL does.
  """
  s = settings
  num_items = jnp.maximum(batch["completion_mask"].sum(), 1.0) / s.micro_batches

  def loss_fn(params, micro):
    logps, entropy = completion_logps(config, params, micro["tokens"],
                                      micro["mask"], s.prompt_len,
                                      s.temperature, s.logps_chunk)
    cmask = micro["completion_mask"]
    old = micro.get("old_logps")
    learner = jax.lax.stop_gradient(logps) if old is None else old
    weights, mismatch = grpo.sampler_mismatch(
        learner, micro["sampler_logps"], cmask, cap=s.sampler_is_cap)
    loss, metrics = grpo.policy_loss(
        logps, old, micro.get("ref_logps"), micro["advantages"], cmask,
        epsilon=s.epsilon, epsilon_high=s.epsilon_high, beta=s.beta,
        loss_type=s.loss_type, max_completion_length=s.max_completion_length,
        num_items_in_batch=num_items,
        token_weights=weights if s.sampler_is_correction else None)
    metrics.update(mismatch)
    metrics["entropy"] = (entropy * cmask).sum() / jnp.maximum(cmask.sum(), 1)
    return loss, metrics

  return _accumulate(loss_fn, params, batch, s.micro_batches)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3,))
def update_step(config: ModelConfig, settings: LossSettings, optimizer,
                state: TrainState, batch):
  """One optimizer update on a scored batch, skipped if non-finite.

  Returns (state, metrics); `metrics["finite"]` is False when the update was
  skipped (the state is then unchanged).
  """
  loss, grads, metrics = loss_and_grads(config, settings, state.params, batch)
  return _apply_update(optimizer, state, loss, grads, metrics)


@dataclasses.dataclass(frozen=True)
class PreferenceSettings:
  """Static settings of the contrastive (preference) loss (TRL's DPO names)."""
  beta: float
  loss_type: str
  label_smoothing: float
  temperature: float
  prompt_len: int
  micro_batches: int
  logps_chunk: int = 64


def pair_logps(per_token_BN, completion_mask_BN, loss_type: str):
  """Per-sequence log-probs of completions: summed over their tokens, or
  averaged for ipo (as TRL's DPO does)."""
  total = jnp.sum(per_token_BN * completion_mask_BN, axis=-1)
  if loss_type == "ipo":
    return total / jnp.maximum(jnp.sum(completion_mask_BN, axis=-1), 1.0)
  return total


def preference_loss_and_grads(config: ModelConfig, settings: PreferenceSettings,
                              params, batch):
  """Mean preference loss and gradients over micro-batches of pairs.

  Args:
    batch: for each of "chosen" and "rejected": "{side}/tokens",
      "{side}/mask" [P, L], "{side}/completion_mask" [P, N] and
      "{side}/ref_logps" [P] (reference sequence log-probs); "weights" [P]
      (0 for padding pairs).

  Returns:
    (loss, grads, metrics).
  """
  s = settings

  def loss_fn(params, micro):
    tokens = jnp.concatenate([micro["chosen/tokens"],
                              micro["rejected/tokens"]])
    mask = jnp.concatenate([micro["chosen/mask"], micro["rejected/mask"]])
    cmask = jnp.concatenate([micro["chosen/completion_mask"],
                             micro["rejected/completion_mask"]])
    logps, _ = completion_logps(config, params, tokens, mask, s.prompt_len,
                                s.temperature, s.logps_chunk)
    chosen, rejected = jnp.split(pair_logps(logps, cmask, s.loss_type), 2)
    return contrastive.preference_loss(
        chosen, rejected, micro["chosen/ref_logps"],
        micro["rejected/ref_logps"], beta=s.beta, loss_type=s.loss_type,
        label_smoothing=s.label_smoothing, weights=micro["weights"])

  return _accumulate(loss_fn, params, batch, s.micro_batches)


def _apply_update(optimizer, state: TrainState, loss, grads, metrics):
  """The optimizer step, skipped (state unchanged) if non-finite."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new = TrainState(params, opt_state)
  new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
  return new, {**metrics, "loss": loss, "grad_norm": grad_norm,
               "finite": finite}


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3,))
def preference_update_step(config: ModelConfig, settings: PreferenceSettings,
                           optimizer, state: TrainState, batch):
  """One optimizer update on a batch of preference pairs (see
  `preference_loss_and_grads`), skipped if non-finite."""
  loss, grads, metrics = preference_loss_and_grads(config, settings,
                                                   state.params, batch)
  return _apply_update(optimizer, state, loss, grads, metrics)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def sequence_logps(config: ModelConfig, params, batch, prompt_len: int,
                   temperature: float, chunk: int = 64):
  """Completion log-probs [B, N] of a batch (no gradient): reference, old."""
  return completion_logps(config, params, batch["tokens"], batch["mask"],
                          prompt_len, temperature, chunk)[0]


@functools.partial(jax.jit, static_argnums=1)
def cast_params(params, dtype: str):
  """A copy of `params` in `dtype`; RMSNorm scales stay float32."""
  target = jnp.dtype(dtype)

  def cast(path, x):
    if getattr(path[-1], "key", None) == "scale":
      return x
    return x.astype(target)
  return jax.tree_util.tree_map_with_path(cast, params)
