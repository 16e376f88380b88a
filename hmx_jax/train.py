"""GRPO training: rollout -> reward -> update, with checkpoints and metrics.

One step:
  1. take `prompts_per_step` prompts, each `num_generations` times;
  2. sample completions with the KV-cache sampler (its log-probs are the old
     log-probs of the policy);
  3. score them: the rubric judge (the policy itself by default) or a
     synthetic reward, and turn rewards into group advantages;
  4. run `num_iterations` clipped policy-gradient updates on the batch.

Everything a step needs is a function of (seed, step), so a resumed run
repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from hmx_jax import chat as chat_lib
from hmx_jax import checkpoints, config_lib, models, rubric, sampling, sharding
from hmx_jax.data import load_prompts
from hmx_jax.errors import UserError
from hmx_jax.models import decoder
from hmx_jax.objectives import grpo
from hmx_jax.rubric_text import get_criterion

log = logging.getLogger(__name__)

# Keys that may differ when a run is resumed (they do not change its result;
# num_steps does, through the learning-rate schedule).
RESUMABLE_KEYS = ("train.checkpoint_every", "train.keep_checkpoints",
                  "train.log_samples_every", "train.progress")
MAX_NON_FINITE_IN_A_ROW = 3


# ------------------------------------------------------------------ log-probs

def completion_logps(config, params, tokens_BL, mask_BL, prompt_len: int,
                     temperature: float):
  """Per-token log-probs and entropies of the completion part.

  Args:
    tokens_BL: prompt (left-padded to `prompt_len`) + completion tokens.
    mask_BL: 1 for real tokens.
    prompt_len: where completions start.
    temperature: logits are divided by it (1 for greedy), as in sampling.

  Returns:
    (logps [B, N], entropy [B, N]) with N = L - prompt_len.
  """
  model = decoder.Decoder(config)
  variables = decoder.as_variables(params)
  hidden, _ = model.apply(variables, tokens_BL,
                          decoder.positions_from_mask(mask_BL),
                          decoder.make_attention_mask(mask_BL),
                          return_hidden=True)
  # Project only the positions that predict completion tokens.
  logits = model.apply(variables, hidden[:, prompt_len - 1:-1],
                       method=decoder.Decoder.logits_from_hidden)
  logits = logits / temperature
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  targets = tokens_BL[:, prompt_len:]
  logps = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return logps, entropy


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


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup + cosine decay, after global-norm clipping."""
  schedule = learning_rate_schedule(c)
  return optax.chain(
      optax.clip_by_global_norm(c.optim.max_grad_norm),
      optax.adamw(schedule, b1=c.optim.b1, b2=c.optim.b2,
                  weight_decay=c.optim.weight_decay))


def learning_rate_schedule(c: ml_collections.ConfigDict):
  total = max(c.train.num_steps * c.grpo.num_iterations, 2)
  warmup = min(c.optim.warmup_steps, total - 1)
  return optax.warmup_cosine_decay_schedule(
      0.0, c.optim.learning_rate, warmup, total,
      end_value=c.optim.learning_rate * c.optim.final_lr_fraction)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3, 4))
def update_step(config, settings: LossSettings, optimizer, params, opt_state,
                batch):
  """One optimizer update on a rollout batch, skipped if non-finite.

  Returns (params, opt_state, metrics); `metrics["finite"]` is False when the
  update was skipped.
  """
  s = settings
  num_items = jnp.maximum(batch["completion_mask"].sum(), 1.0) / s.micro_batches

  def loss_fn(params, micro):
    logps, entropy = completion_logps(config, params, micro["tokens"],
                                      micro["mask"], s.prompt_len,
                                      s.temperature)
    loss, metrics = grpo.policy_loss(
        logps, micro["old_logps"], micro.get("ref_logps"),
        micro["advantages"], micro["completion_mask"], epsilon=s.epsilon,
        epsilon_high=s.epsilon_high, beta=s.beta, loss_type=s.loss_type,
        max_completion_length=s.max_completion_length,
        num_items_in_batch=num_items)
    cmask = micro["completion_mask"]
    metrics["entropy"] = (entropy * cmask).sum() / jnp.maximum(cmask.sum(), 1)
    return loss, metrics

  # Gradient accumulation: equal micro-batches, losses averaged, which equals
  # the full-batch loss for every loss_type (dapo via num_items_in_batch).
  micro = jax.tree.map(
      lambda x: x.reshape((s.micro_batches, -1) + x.shape[1:]), batch)

  def accumulate(carry, mb):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, mb)
    return jax.tree.map(jnp.add, carry,
                        (grads, loss, metrics)), None

  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                       (params, *jax.eval_shape(loss_fn, params, first)))
  (grads, loss, metrics), _ = jax.lax.scan(accumulate, zeros, micro)
  scale = 1.0 / s.micro_batches
  grads = jax.tree.map(lambda g: g * scale, grads)
  loss = loss * scale
  metrics = jax.tree.map(lambda m: m * scale, metrics)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(finite, a, b), new, old)
  return (keep(new_params, params), keep(new_opt_state, opt_state),
          {**metrics, "loss": loss, "grad_norm": grad_norm,
           "finite": finite})


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _logps_only(config, params, batch, prompt_len, temperature):
  return completion_logps(config, params, batch["tokens"], batch["mask"],
                          prompt_len, temperature)[0]


# -------------------------------------------------------------------- rewards

def synthetic_reward(c, completions: list[list[int]]) -> dict[str, np.ndarray]:
  """Fraction of completion tokens equal to `reward.target_token`."""
  target = c.reward.target_token
  frac = [np.mean(np.asarray(t) == target) if t else 0.0 for t in completions]
  return {"target_token": np.asarray(frac, np.float32)}


# -------------------------------------------------------------------- checks

def validate(c: ml_collections.ConfigDict, prompts, mesh) -> None:
  """Checks a config before anything is written. Raises UserError."""
  g = c.grpo
  if g.num_generations < 2:
    raise UserError(f"grpo.num_generations={g.num_generations} must be >= 2 "
                    "(advantages compare generations of one prompt)")
  batch = c.train.prompts_per_step * g.num_generations
  data_size = mesh.shape["data"] * mesh.shape["fsdp"] if mesh else 1
  if batch % data_size:
    raise UserError(f"batch of {batch} (train.prompts_per_step * "
                    f"grpo.num_generations) is not divisible by the mesh's "
                    f"data-parallel size {data_size}")
  if batch % c.train.gradient_accumulation_steps:
    raise UserError(f"batch of {batch} is not divisible by "
                    "train.gradient_accumulation_steps="
                    f"{c.train.gradient_accumulation_steps}")
  if c.reward.kind == "rubric":
    for name in c.reward.criteria:
      get_criterion(name)
    rubric.combine_rewards({n: np.zeros(1) for n in c.reward.criteria},
                           dict(c.reward.weights), c.reward.direction)
    if not c.reward.judge:
      raise UserError("reward.judge is empty: use self, initial or a model "
                      "spec")
  elif c.reward.kind != "target_token":
    raise UserError(f"reward.kind={c.reward.kind!r} is not rubric or "
                    "target_token")
  if g.loss_type not in grpo.LOSS_AGGREGATIONS:
    raise UserError(f"grpo.loss_type={g.loss_type!r} is not one of "
                    f"{sorted(grpo.LOSS_AGGREGATIONS)}")
  if g.scale_rewards not in grpo.SCALE_REWARDS:
    raise UserError(f"grpo.scale_rewards={g.scale_rewards!r} is not one of "
                    f"{grpo.SCALE_REWARDS}")


def check_resume(workdir: str, c: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir whose saved config differs.

  Keys that do not change the trained params (checkpoint and logging
  cadence, progress bars, the `eval` section) may differ.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  differ = config_lib.differing_keys(
      saved, c, ignore=lambda k: k in RESUMABLE_KEYS or k.startswith("eval."))
  if differ:
    details = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in differ[:6])
    raise UserError(f"{workdir} holds a run with a different config: "
                    f"{details}; use a new --workdir")


# ---------------------------------------------------------------- the trainer

class _Preemption:
  """Turns SIGTERM into a flag checked between steps."""

  def __init__(self):
    self.requested = False

  def __enter__(self):
    self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._old)


def _mesh_context(mesh):
  return sharding.use_mesh(mesh) if mesh is not None else contextlib.nullcontext()


def _write_jsonl(path: str, row: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")


def train(c: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) GRPO training. Returns the last step's metrics."""
  mesh = (sharding.make_mesh(dict(c.mesh.shape)) if c.mesh.shape else None)
  prompts = load_prompts(c.data.train_prompts)
  validate(c, prompts, mesh)
  check_resume(workdir, c)

  model_config, params, tokenizer = models.load_model(
      c.model.spec, dtype=c.model.dtype, mesh=mesh)
  if c.model.get("random_init", False):
    params = jax.tree.map(jnp.asarray, decoder.init_params(model_config,
                                                           c.seed))
  judge_model = None
  if c.reward.kind == "rubric" and c.reward.judge not in ("self", "initial"):
    # A fixed external judge: its own architecture and tokenizer.
    judge_model = models.load_model(c.reward.judge, dtype=c.model.dtype,
                                    mesh=mesh)
  optimizer = make_optimizer(c)
  opt_state = optimizer.init(params)
  frozen_params = (jax.tree.map(jnp.copy, params)
                   if c.grpo.beta or c.reward.judge == "initial" else None)

  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(c.to_json(indent=2))
  manager = ocp.CheckpointManager(
      checkpoints.checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=c.train.keep_checkpoints))
  start = 0
  if manager.latest_step() is not None:
    start = manager.latest_step()
    abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)
    restored = manager.restore(start, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract(params)),
        opt_state=ocp.args.StandardRestore(abstract(opt_state))))
    params, opt_state = restored["params"], restored["opt_state"]
    print(f"resumed from step {start}", flush=True)

  g = c.grpo
  stop_ids = chat_lib.stop_ids_for(model_config, tokenizer)
  encoded = [chat_lib.encode_chat(tokenizer, p.messages) for p in prompts]
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  samples_path = os.path.join(workdir, "samples.jsonl")
  writer = None
  try:
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
  except ImportError:
    pass
  schedule = learning_rate_schedule(c)
  non_finite_in_a_row = 0
  last = {}
  progress = None
  if c.train.progress:
    from tqdm import tqdm
    progress = tqdm(total=c.train.num_steps, initial=start, desc="train")

  with _Preemption() as preemption:
    for step in range(start, c.train.num_steps):
      t0 = time.time()
      rng = np.random.default_rng([c.seed, step])
      idx = rng.choice(len(prompts), c.train.prompts_per_step,
                       replace=len(prompts) < c.train.prompts_per_step)
      batch_prompts = [encoded[i] for i in idx for _ in range(g.num_generations)]
      out = sampling.generate(
          model_config, params, batch_prompts,
          max_new_tokens=c.sampling.max_new_tokens,
          temperature=c.sampling.temperature, top_k=c.sampling.top_k,
          top_p=c.sampling.top_p, seed=c.seed * 1_000_003 + step,
          stop_ids=stop_ids, pad_id=tokenizer.pad_token_id or 0, mesh=mesh)
      completions = out.completions()
      t_rollout = time.time()

      if c.reward.kind == "target_token":
        scores, mass = synthetic_reward(c, completions), None
        rewards = scores["target_token"]
      else:
        if judge_model is not None:
          judge = judge_model
        else:
          judge = (model_config,
                   params if c.reward.judge == "self" else frozen_params,
                   tokenizer)
        texts = [tokenizer.decode(t, skip_special_tokens=True)
                 for t in completions]
        convs = [prompts[i].messages for i in idx
                 for _ in range(g.num_generations)]
        scores, mass = rubric.judge(*judge, convs, texts,
                                    list(c.reward.criteria),
                                    micro_batch=c.reward.micro_batch)
        rewards = rubric.combine_rewards(scores, dict(c.reward.weights),
                                         c.reward.direction)

      t_reward = time.time()
      advantages = grpo.group_advantages(jnp.asarray(rewards),
                                         g.num_generations, g.scale_rewards)
      completion_mask = out.mask.astype(np.float32)
      truncated = np.asarray([r == sampling.FINISH_LENGTH
                              for r in out.finish_reasons])
      if g.mask_truncated_completions:
        completion_mask = completion_mask * (~truncated)[:, None]
      P = out.prompt_tokens.shape[1]
      batch = {
          "tokens": np.concatenate([out.prompt_tokens, out.tokens], axis=1),
          "mask": np.concatenate([out.prompt_mask, out.mask], axis=1),
          "old_logps": out.logprobs,
          "advantages": np.asarray(advantages),
          "completion_mask": completion_mask,
      }
      temperature = c.sampling.temperature or 1.0
      if mesh is not None:
        batch = jax.device_put(batch, sharding.batch_sharding(mesh))
      if g.beta:
        with _mesh_context(mesh):
          batch["ref_logps"] = _logps_only(model_config, frozen_params, batch,
                                           P, temperature)
      settings = LossSettings(
          epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta,
          loss_type=g.loss_type, temperature=temperature, prompt_len=P,
          max_completion_length=c.sampling.max_new_tokens,
          micro_batches=c.train.gradient_accumulation_steps)
      with _mesh_context(mesh):
        for _ in range(g.num_iterations):
          params, opt_state, m = update_step(model_config, settings,
                                             optimizer, params, opt_state,
                                             batch)
          m = jax.device_get(m)
          if not m["finite"]:
            break
      if not m["finite"]:
        non_finite_in_a_row += 1
        log.warning("step %d: non-finite loss or gradient; update skipped",
                    step)
        if non_finite_in_a_row >= MAX_NON_FINITE_IN_A_ROW:
          raise UserError(
              f"{non_finite_in_a_row} non-finite steps in a row at step "
              f"{step}; stopping (last checkpoint: {manager.latest_step()})")
      else:
        non_finite_in_a_row = 0

      stats = grpo.group_reward_stats(jnp.asarray(rewards), g.num_generations)
      elapsed = time.time() - t0
      lengths = out.mask.sum(axis=1)
      row = {
          "step": step + 1,
          **{k: float(v) for k, v in stats.items()},
          **{f"rewards/{k}/mean": float(np.mean(v)) for k, v in scores.items()},
          "completions/mean_length": float(lengths.mean()),
          "completions/clipped_ratio": float(truncated.mean()),
          "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
          "entropy": float(m["entropy"]),
          "learning_rate": float(schedule(step * g.num_iterations)),
          "step_time": elapsed,
          "time/rollout": t_rollout - t0,
          "time/reward": t_reward - t_rollout,
          "time/update": time.time() - t_reward,
          "tokens_per_second": float(lengths.sum() / elapsed),
          "non_finite_skipped": int(not m["finite"]),
      }
      row.update({k: float(v) for k, v in m.items()
                  if k.startswith("clip_ratio") or k == "kl"})
      if mass is not None:
        row["judge/score_mass"] = float(np.mean([v.mean()
                                                 for v in mass.values()]))
      _write_jsonl(metrics_path, row)
      if writer is not None:
        for k, v in row.items():
          if k != "step":
            writer.add_scalar(k, v, step + 1)
      if c.train.log_samples_every and (step + 1) % c.train.log_samples_every == 0:
        for j in range(min(len(completions), 4)):
          _write_jsonl(samples_path, {
              "step": step + 1,
              "prompt": tokenizer.decode(batch_prompts[j]),
              "completion": tokenizer.decode(completions[j],
                                             skip_special_tokens=True),
              "scores": {k: float(v[j]) for k, v in scores.items()}})
      if progress is not None:
        progress.set_postfix(reward=f"{row['reward']:.3f}",
                             kl=f"{row.get('kl', 0.0):.4f}")
        progress.update(1)
      last = row

      done = step + 1 == c.train.num_steps
      if (m["finite"] and ((step + 1) % c.train.checkpoint_every == 0 or done
                           or preemption.requested)):
        manager.save(step + 1, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state)), force=True)
        manager.wait_until_finished()
      if preemption.requested:
        print(f"SIGTERM: saved step {manager.latest_step()}, exiting",
              flush=True)
        break
  manager.close()
  if progress is not None:
    progress.close()
  if writer is not None:
    writer.close()
  return last
