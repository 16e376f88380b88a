"""Training: the loop around rollout -> reward -> learner.

One GRPO step (`objective=grpo`):
  1. rollout (`hmx_jax.rollout`): `prompts_per_step` prompts, each sampled
     `num_generations` times by the policy's compute-dtype copy;
  2. reward (`hmx_jax.reward`): the rubric judge (the policy itself by
     default) or a synthetic reward, turned into group advantages;
  3. learner (`hmx_jax.learner`): `num_iterations` clipped policy-gradient
     updates of the train state on the batch.

A contrastive step (`objective=contrastive`) makes preference pairs
instead (`hmx_jax.preference`: the best and worst of each self-judged
group, or offline pairs from `data.pairs`) and takes one update of the
preference loss (`objectives/contrastive.py`) against the initial policy.

The loop owns what lies around them: checkpoints (orbax), resume,
metrics and samples, SIGTERM, and skipped non-finite updates. Everything a
step does is a function of (seed, step), so a resumed run repeats exactly
what an uninterrupted one would have done.

Several processes (`hmx_jax.distributed`) run this same loop over one mesh.
Each computes the whole step's prompt list, calls the sampler and the judge
(global programs over the mesh) with the same inputs, and gets the whole
rollout back (`sharding.to_host`), so every host holds the same texts,
rewards and metrics, and every host's judge prompts are the ones a single
process would build: the results equal the one-process run's. Each process
then places only its own rows of the update batch (`sharding.put_batch`).
Process 0 alone writes files; every process joins the orbax saves; a
SIGTERM on any host stops all of them after the same step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from hmx_jax import (chat as chat_lib, checkpoints, config_lib, distributed,
                     learner, models, preference, reward, rollout, rubric,
                     sharding)
from hmx_jax.data import load_pairs, load_prompts
from hmx_jax.errors import UserError
from hmx_jax.models import decoder
from hmx_jax.models.chat_format import ChatFormat
from hmx_jax.objectives import contrastive, grpo
from hmx_jax.rubric_text import get_criterion
from hmx_jax.run_log import RunLog

log = logging.getLogger(__name__)

# Keys that may differ when a run is resumed (they do not change its result;
# num_steps does, through the learning-rate schedule).
RESUMABLE_KEYS = ("train.checkpoint_every", "train.keep_checkpoints",
                  "train.log_samples_every", "train.progress",
                  "train.compilation_cache_dir", "train.eval_every",
                  "train.eval_prompts")
MAX_NON_FINITE_IN_A_ROW = 3
COMPUTE_DTYPES = ("float32", "bfloat16")
OBJECTIVES = ("grpo", "contrastive")


# -------------------------------------------------------------------- checks

def validate(c: ml_collections.ConfigDict, prompts, mesh) -> None:
  """Checks a config before anything is written. Raises UserError."""
  del prompts
  m, g = c.model, c.grpo
  if c.objective not in OBJECTIVES:
    raise UserError(f"objective={c.objective!r} is not one of {OBJECTIVES}")
  if c.objective == "contrastive":
    p = c.contrastive
    if p.loss_type not in contrastive.LOSS_TYPES:
      raise UserError(f"contrastive.loss_type={p.loss_type!r} is not one of "
                      f"{contrastive.LOSS_TYPES}")
    if p.beta <= 0:
      raise UserError(f"contrastive.beta={p.beta} must be > 0")
    if not 0 <= p.label_smoothing < 0.5:
      raise UserError(f"contrastive.label_smoothing={p.label_smoothing} must "
                      "be in [0, 0.5)")
  if m.param_dtype == "bfloat16":
    raise UserError(
        "model.param_dtype=bfloat16 cannot train: Adam steps of ~1e-5 on "
        "weights of ~0.02 are below bfloat16's spacing there (~1.2e-4) and "
        "round away. Keep float32 master weights and set "
        "model.compute_dtype=bfloat16")
  if m.param_dtype != "float32":
    raise UserError(f"model.param_dtype={m.param_dtype!r} is not float32")
  if m.compute_dtype not in COMPUTE_DTYPES:
    raise UserError(f"model.compute_dtype={m.compute_dtype!r} is not one of "
                    f"{COMPUTE_DTYPES}")
  if c.sampling.temperature <= 0:
    raise UserError(
        f"sampling.temperature={c.sampling.temperature} cannot train: greedy "
        "decoding makes every generation of a prompt the same, so every "
        "advantage is 0; use a temperature > 0 (e.g. 1.0)")
  if g.num_generations < 2:
    raise UserError(f"grpo.num_generations={g.num_generations} must be >= 2 "
                    "(advantages compare generations of one prompt)")
  if g.num_iterations < 1:
    raise UserError(f"grpo.num_iterations={g.num_iterations} must be >= 1")
  if mesh is None and jax.process_count() > 1:
    raise UserError(f"mesh.shape is empty but {jax.process_count()} "
                    "processes run: set mesh.shape over all their devices, "
                    "e.g. {'data': -1}")
  batch = c.train.prompts_per_step * g.num_generations
  data_size = mesh.shape["data"] * mesh.shape["fsdp"] if mesh else 1
  if batch % data_size:
    raise UserError(f"batch of {batch} (train.prompts_per_step * "
                    f"grpo.num_generations) is not divisible by the mesh's "
                    f"data-parallel size {data_size}")
  accumulation = c.train.gradient_accumulation_steps
  if accumulation < 1 or batch % accumulation:
    raise UserError(f"batch of {batch} is not divisible by "
                    f"train.gradient_accumulation_steps={accumulation}")
  if c.reward.kind == "rubric":
    for name in c.reward.criteria:
      get_criterion(name)
    rubric.combine_rewards({n: np.zeros(1) for n in c.reward.criteria},
                           dict(c.reward.weights), c.reward.direction)
    if not c.reward.judge:
      raise UserError("reward.judge is empty: use self, initial or a model "
                      "spec")
    rubric.check_readout(c.reward.readout, "reward.readout")
    if c.reward.repetition_penalty < 0:
      raise UserError(f"reward.repetition_penalty="
                      f"{c.reward.repetition_penalty} must be >= 0")
  elif c.reward.kind != "target_token":
    raise UserError(f"reward.kind={c.reward.kind!r} is not rubric or "
                    "target_token")
  if g.loss_type not in grpo.LOSS_AGGREGATIONS:
    raise UserError(f"grpo.loss_type={g.loss_type!r} is not one of "
                    f"{sorted(grpo.LOSS_AGGREGATIONS)}")
  if g.scale_rewards not in grpo.SCALE_REWARDS:
    raise UserError(f"grpo.scale_rewards={g.scale_rewards!r} is not one of "
                    f"{grpo.SCALE_REWARDS}")
  if g.sampler_is_cap <= 0:
    raise UserError(f"grpo.sampler_is_cap={g.sampler_is_cap} must be > 0")
  if c.train.eval_every < 0:
    raise UserError(f"train.eval_every={c.train.eval_every} must be >= 0 "
                    "(0: no held-out checks)")
  if c.train.eval_every:
    if c.train.eval_prompts < 1:
      raise UserError(f"train.eval_prompts={c.train.eval_prompts} must be "
                      ">= 1 when train.eval_every is set")
    if c.eval.batch_size % data_size:
      raise UserError(f"eval.batch_size={c.eval.batch_size} is not a "
                      "multiple of the mesh's data-parallel size "
                      f"{data_size} (the held-out checks run on it)")
    for name in c.eval.expression.criteria:
      get_criterion(name)
    rubric.check_readout(c.eval.expression.readout,
                         "eval.expression.readout")
    load_prompts(c.data.heldout_prompts)


def check_resume(workdir: str, c: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir whose saved config differs.

  Keys that do not change the trained params (checkpoint and logging
  cadence, progress bars, the `eval` section) may differ.
  """
  path = checkpoints.workdir_path(workdir) / "config.json"
  if not path.exists():
    return
  saved = json.loads(path.read_text())
  differ = config_lib.differing_keys(
      saved, c, ignore=lambda k: k in RESUMABLE_KEYS or k.startswith("eval."))
  if differ:
    # Changed values first, then keys only one of the two configs has.
    differ.sort(key=lambda d: d[1] is None or d[2] is None)
    details = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in differ[:6])
    raise UserError(f"{workdir} holds a run with a different config: "
                    f"{details}; use a new --workdir")


def use_compilation_cache(directory: str) -> None:
  """Keeps compiled programs in JAX's persistent cache at `directory`.

  Every program is written, however small or quick to compile, so that a
  rerun or a resume compiles nothing it compiled before. "" leaves JAX's
  own setting (e.g. $JAX_COMPILATION_CACHE_DIR) as it is.
  """
  if not directory:
    return
  from jax.experimental.compilation_cache import compilation_cache
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  if jax.config.jax_compilation_cache_dir != directory:
    compilation_cache.set_cache_dir(directory)
    # A cache opened at an earlier compile would keep its old directory.
    compilation_cache.reset_cache()


# ----------------------------------------------------------------- SIGTERM

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


# ---------------------------------------------------------------- the trainer

def _mesh_context(mesh):
  return (sharding.use_mesh(mesh) if mesh is not None
          else contextlib.nullcontext())


def _compute_copy(config, params, compute_dtype: str):
  """(config, params) the rollout, reference and judge run on: the master
  weights themselves in float32, else a copy cast once."""
  if compute_dtype == config.param_dtype:
    return config, params
  return (config.replace(param_dtype=compute_dtype, dtype=compute_dtype),
          learner.cast_params(params, compute_dtype))


@dataclasses.dataclass
class _Run:
  """What every step of a run uses, built once."""
  c: ml_collections.ConfigDict
  mesh: object
  model_config: object  # The master weights' config (float32).
  learner_config: object  # The same with the compute dtype.
  optimizer: object
  tokenizer: object
  chat: ChatFormat
  prompts: list
  encoded: list  # Token ids of each prompt, ready for the assistant turn.
  pairs: list | None  # Offline preference pairs (contrastive), or None.
  rewarder: reward.Rewarder
  frozen: tuple | None  # (config, params) of the initial policy.
  stop_ids: list
  pad_id: int


def _setup(c, mesh, prompts):
  """(run, initial train state): models loaded, optimizer built."""
  model_config, params, tokenizer = models.load_model(
      c.model.spec, dtype=c.model.param_dtype, mesh=mesh)
  if c.model.get("random_init", False):
    params = jax.tree.map(jnp.asarray, decoder.init_params(model_config,
                                                           c.seed))
  chat = ChatFormat.from_config(tokenizer, c.model.chat)
  external = None
  if c.reward.kind == "rubric" and c.reward.judge not in ("self", "initial"):
    # A fixed external judge: its own architecture and tokenizer.
    judge_config, judge_params, judge_tokenizer = models.load_model(
        c.reward.judge, dtype=c.model.compute_dtype, mesh=mesh)
    external = (judge_config, judge_params,
                ChatFormat.from_config(judge_tokenizer, c.model.chat))
  # The KL / preference reference, the `initial` judge and the judge of the
  # held-out checks: the starting policy in the compute dtype (a copy:
  # master weights are donated).
  frozen = None
  if (c.grpo.beta or c.objective == "contrastive" or c.train.eval_every
      or (c.reward.kind == "rubric" and c.reward.judge == "initial")):
    frozen_config, frozen_params = _compute_copy(model_config, params,
                                                 c.model.compute_dtype)
    if frozen_params is params:
      frozen_params = jax.tree.map(jnp.copy, params)
    frozen = (frozen_config, frozen_params)
  optimizer = learner.make_optimizer(c)
  pairs = load_pairs(c.data.pairs) if _offline(c) else None
  run = _Run(
      c=c, mesh=mesh, model_config=model_config,
      learner_config=model_config.replace(dtype=c.model.compute_dtype,
                                          remat=c.model.remat),
      optimizer=optimizer, tokenizer=tokenizer, chat=chat, prompts=prompts,
      encoded=[chat.encode(p.messages) for p in prompts], pairs=pairs,
      rewarder=reward.Rewarder(c, chat, frozen=frozen, external=external,
                               mesh=mesh),
      frozen=frozen, stop_ids=chat_lib.stop_ids_for(model_config, tokenizer),
      pad_id=tokenizer.pad_token_id or 0)
  rollout.check_prompt_lengths(run.encoded, c.sampling.max_prompt_len,
                               [p.id for p in prompts])
  return run, learner.TrainState(params, _init_opt_state(optimizer, params,
                                                         mesh))


def _init_opt_state(optimizer, params, mesh):
  """The optimizer state: its moments sharded like the params, the rest
  (step counts) replicated over the mesh, the rule `aot.abstract_state`
  compiles with. Left to `init`, a step count lives on each process's first
  device: a restore then commits it there, and the update refuses it on a
  mesh of several processes."""
  state = optimizer.init(params)
  if mesh is None:
    return state
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def place(x):
    value = np.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated,
                                        lambda index: value[index])
  return optax.tree_map_params(optimizer, lambda x: x, state,
                               transform_non_params=place)


def _offline(c) -> bool:
  return c.objective == "contrastive" and bool(c.data.pairs)


def _rollout_and_reward(run: _Run, state, step: int):
  """(rollout, texts, scores, rewards, metrics) of `step`."""
  c = run.c
  t0 = time.time()
  policy = _compute_copy(run.model_config, state.params,
                         c.model.compute_dtype)
  indices = rollout.select_prompts(c.seed, step, len(run.prompts),
                                   c.train.prompts_per_step)
  ro = rollout.sample(*policy, run.encoded, indices,
                      num_generations=c.grpo.num_generations,
                      sampling_config=c.sampling,
                      seed=c.seed * 1_000_003 + step, stop_ids=run.stop_ids,
                      pad_id=run.pad_id, mesh=run.mesh)
  completions = ro.completions()
  texts = [run.tokenizer.decode(t, skip_special_tokens=True)
           for t in completions]
  t1 = time.time()
  scores, rewards, metrics = run.rewarder(
      completions, texts,
      [run.prompts[i].messages for i in ro.prompt_indices], policy)
  lengths = ro.mask.sum(axis=1)
  stats = grpo.group_reward_stats(jnp.asarray(rewards),
                                  c.grpo.num_generations)
  metrics = {
      **{k: float(v) for k, v in stats.items()},
      **{f"rewards/{k}/mean": float(np.mean(v)) for k, v in scores.items()},
      **metrics,
      "completions/mean_length": float(lengths.mean()),
      "completions/clipped_ratio": float(ro.truncated.mean()),
      "time/rollout": t1 - t0, "time/reward": time.time() - t1,
      "tokens_per_second": float(lengths.sum() / max(time.time() - t0,
                                                     1e-9)),
  }
  samples = [{"prompt": run.tokenizer.decode(run.encoded[ro.prompt_indices[j]]),
              "completion": texts[j],
              "scores": {k: float(v[j]) for k, v in scores.items()}}
             for j in range(min(len(texts), 4))]
  return ro, rewards, metrics, samples, policy


def _grpo_step(run: _Run, state, step: int):
  """Rollout, reward, `num_iterations` GRPO updates: (state, metrics,
  samples)."""
  c, g = run.c, run.c.grpo
  ro, rewards, metrics, samples, policy = _rollout_and_reward(run, state,
                                                              step)
  t0 = time.time()
  completion_mask = ro.mask.astype(np.float32)
  if g.mask_truncated_completions:
    completion_mask = completion_mask * (~ro.truncated)[:, None]
  advantages = grpo.group_advantages(jnp.asarray(rewards), g.num_generations,
                                     g.scale_rewards)
  batch = sharding.put_batch(
      {**ro.sequences(), "sampler_logps": ro.sampler_logps,
       "advantages": np.asarray(advantages),
       "completion_mask": completion_mask}, run.mesh)
  settings = learner.LossSettings(
      epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta,
      loss_type=g.loss_type, temperature=c.sampling.temperature,
      prompt_len=ro.prompt_len,
      max_completion_length=c.sampling.max_new_tokens,
      micro_batches=c.train.gradient_accumulation_steps,
      logps_chunk=c.train.logps_chunk,
      sampler_is_correction=bool(g.sampler_is_correction),
      sampler_is_cap=float(g.sampler_is_cap))
  args = (ro.prompt_len, settings.temperature, settings.logps_chunk)
  with _mesh_context(run.mesh):
    if g.beta:
      batch["ref_logps"] = learner.sequence_logps(*(run.frozen or policy),
                                                  batch, *args)
    if g.num_iterations > 1:
      # One training forward before the updates: the old policy's log-probs.
      batch["old_logps"] = learner.sequence_logps(
          run.learner_config, state.params, batch, *args)
    for _ in range(g.num_iterations):
      state, m = learner.update_step(run.learner_config, settings,
                                     run.optimizer, state, batch)
      m = sharding.to_host(m)
      if not m["finite"]:
        break
  return state, {**metrics, **m, "time/update": time.time() - t0}, samples


def _contrastive_step(run: _Run, state, step: int):
  """Pairs (self-judged online, or offline), then one preference update:
  (state, metrics, samples)."""
  c, p = run.c, run.c.contrastive
  metrics, samples = {}, []
  if run.pairs is None:
    ro, rewards, metrics, samples, _ = _rollout_and_reward(run, state, step)
    batch, pair_metrics = preference.online_batch(
        ro, rewards, num_generations=c.grpo.num_generations,
        min_gap=p.min_gap, mask_truncated=c.grpo.mask_truncated_completions)
    metrics.update(pair_metrics)
  else:
    indices = rollout.select_prompts(c.seed, step, len(run.pairs),
                                     c.train.prompts_per_step)
    batch = preference.offline_batch(run.pairs, indices, run.chat,
                                     run.stop_ids, run.pad_id)
  prompt_len = (batch["chosen/tokens"].shape[1]
                - batch["chosen/completion_mask"].shape[1])
  # The preference loss compares the policies themselves, whatever
  # temperature the pairs were sampled at.
  temperature = 1.0
  t0 = time.time()
  batch = sharding.put_batch(batch, run.mesh)
  settings = learner.PreferenceSettings(
      beta=p.beta, loss_type=p.loss_type, label_smoothing=p.label_smoothing,
      temperature=temperature, prompt_len=prompt_len,
      micro_batches=c.train.gradient_accumulation_steps,
      logps_chunk=c.train.logps_chunk)
  with _mesh_context(run.mesh):
    for side in preference.SIDES:
      per_token = learner.sequence_logps(
          *run.frozen, {"tokens": batch[f"{side}/tokens"],
                        "mask": batch[f"{side}/mask"]},
          prompt_len, temperature, settings.logps_chunk)
      batch[f"{side}/ref_logps"] = learner.pair_logps(
          per_token, batch[f"{side}/completion_mask"], p.loss_type)
    state, m = learner.preference_update_step(
        run.learner_config, settings, run.optimizer, state, batch)
    m = sharding.to_host(m)
  return state, {**metrics, **m, "time/update": time.time() - t0}, samples


HELDOUT = "heldout/"


def heldout_check(run: _Run, params) -> dict:
  """The periodic held-out check of training (`train.eval_every`).

  Greedy answers of the policy to `train.eval_prompts` held-out prompts,
  the categories in turn (`eval.expression.max_new_tokens` tokens), scored
  by the frozen initial model as judge and by the lexical measure: the
  expression evaluation at a small size, so that the curves show whether
  what the self-judge rewards moves a judge that does not train.

  Returns:
    {"heldout/expression/judge", "heldout/expression/judge/<criterion>",
    "heldout/expression/lexical", "heldout/expression/length",
    "heldout/expression/repetition": means}.
  """
  from hmx_jax.evals import common, expression
  c = run.c
  policy = _compute_copy(run.model_config, params, c.model.compute_dtype)
  model = common.EvalModel(*policy, run.tokenizer, chat=run.chat,
                           mesh=run.mesh)
  judge = common.EvalModel(*run.frozen, run.tokenizer, chat=run.chat,
                           mesh=run.mesh)
  criteria = list(c.eval.expression.criteria)
  items, _ = expression.evaluate(
      model, judge, prompts=c.data.heldout_prompts,
      limit=c.train.eval_prompts, criteria=criteria,
      max_new_tokens=c.eval.expression.max_new_tokens,
      batch_size=c.eval.batch_size, seed=c.eval.seed,
      readout=c.eval.expression.readout)
  keys = (["expression/judge"] + [f"expression/judge/{name}"
                                  for name in criteria]
          + ["expression/lexical", "expression/length",
             "expression/repetition"])
  return {HELDOUT + k: float(np.mean(items[k])) for k in keys}


def _save(manager, step: int, state: learner.TrainState) -> None:
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params),
      opt_state=ocp.args.StandardSave(state.opt_state)), force=True)
  manager.wait_until_finished()


def _restore(manager, state: learner.TrainState) -> learner.TrainState:
  abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract(state.params)),
      opt_state=ocp.args.StandardRestore(abstract(state.opt_state))))
  return learner.TrainState(restored["params"], restored["opt_state"])


def train(c: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) training with `c.objective` (grpo or contrastive).

  Returns:
    The last step's metrics row, with "preempted": True when SIGTERM
    stopped the run after saving (rerunning resumes it), else False.
  """
  use_compilation_cache(c.train.compilation_cache_dir)
  mesh = sharding.make_mesh(dict(c.mesh.shape)) if c.mesh.shape else None
  prompts = load_prompts(c.data.train_prompts)
  validate(c, prompts, mesh)
  if _offline(c):
    load_pairs(c.data.pairs)  # Bad pairs fail before anything is written.
  check_resume(workdir, c)
  distributed.barrier("hmx_jax:start")
  run, state = _setup(c, mesh, prompts)
  step_fn = _grpo_step if c.objective == "grpo" else _contrastive_step

  primary = distributed.is_primary()
  say = print if primary else (lambda *a, **k: None)
  directory = checkpoints.workdir_path(workdir)
  # Every process has read the saved config before process 0 rewrites it.
  distributed.barrier("hmx_jax:config_checked")
  if primary:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(c.to_json(indent=2))
  manager = ocp.CheckpointManager(
      checkpoints.checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=c.train.keep_checkpoints))
  start = manager.latest_step() or 0
  if start:
    state = _restore(manager, state)
    say(f"resumed from step {start}", flush=True)

  schedule = learner.learning_rate_schedule(c)
  iterations = c.grpo.num_iterations if c.objective == "grpo" else 1
  # A run that restarts from step 0 checks again before its first step:
  # the step-0 row of an earlier try is dropped, not repeated.
  kept = -1 if start == 0 and c.train.eval_every else start
  run_log = RunLog(directory, kept) if primary else None
  non_finite_in_a_row, last_finite_step = 0, start
  last = {}
  progress = None
  stop = False
  if c.train.progress and primary:
    from tqdm import tqdm
    progress = tqdm(total=c.train.num_steps, initial=start,
                    desc=f"train ({c.objective})")

  check_every = c.train.eval_every

  def check(params) -> dict:
    t = time.time()
    return {**heldout_check(run, params), "time/heldout_check": time.time() - t}

  if check_every and start == 0:
    # Before the first update: where the curves of the checks start.
    row = {"step": 0, **check(state.params)}
    if run_log is not None:
      run_log.row(row)

  with _Preemption() as preemption:
    for step in range(start, c.train.num_steps):
      t0 = time.time()
      state, metrics, samples = step_fn(run, state, step)
      finite = bool(metrics.pop("finite"))
      if finite:
        non_finite_in_a_row, last_finite_step = 0, step + 1
      else:
        non_finite_in_a_row += 1
        log.warning("step %d: non-finite loss or gradient; update skipped",
                    step + 1)
        if non_finite_in_a_row >= MAX_NON_FINITE_IN_A_ROW:
          raise UserError(
              f"{non_finite_in_a_row} non-finite steps in a row at step "
              f"{step + 1}; stopping (last checkpoint: "
              f"{manager.latest_step()})")
      row = {"step": step + 1,
             **{k: float(v) for k, v in metrics.items()},
             "learning_rate": float(schedule(step * iterations)),
             "step_time": time.time() - t0,
             "non_finite_skipped": int(not finite)}
      done = step + 1 == c.train.num_steps
      if check_every and ((step + 1) % check_every == 0 or done):
        row.update(check(state.params))
      if run_log is not None:
        run_log.row(row)
      every = c.train.log_samples_every
      if run_log is not None and every and (step + 1) % every == 0:
        for sample in samples:
          run_log.sample({"step": step + 1, **sample})
      if progress is not None:
        shown = {k: f"{row[k]:.3f}" for k in ("reward", "loss") if k in row}
        progress.set_postfix(**shown)
        progress.update(1)
      last = row

      # A SIGTERM on any host stops every host after this same step.
      stop = distributed.any_process(preemption.requested)
      # A skipped update leaves the state as it was, so a checkpoint after
      # it holds the last finite update's params.
      if (step + 1) % c.train.checkpoint_every == 0 or done or stop:
        _save(manager, step + 1, state)
      if done and not finite:
        say(f"step {step + 1} was non-finite and skipped: checkpoint "
            f"{step + 1} holds the params of step {last_finite_step}",
            flush=True)
      if stop:
        # Every process says it: a host's log shows why it stopped.
        print(f"SIGTERM: saved step {manager.latest_step()}, exiting; rerun "
              "the same command to resume", flush=True)
        break
  manager.close()
  if progress is not None:
    progress.close()
  if run_log is not None:
    run_log.close()
  return {**last, "preempted": stop}
