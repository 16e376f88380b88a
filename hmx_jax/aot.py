"""`hmx-feel aot`: compile a TPU preset's programs on a CPU, and size them.

With libtpu installed (the `tpu` extra), XLA compiles for a Cloud TPU slice
that is not there: `jax.experimental.topologies` describes the slice's chips,
the mesh is built over them, and each program of a training step is lowered
with abstract inputs (`jax.ShapeDtypeStruct`s carrying their shardings) and
compiled. Nothing is allocated and no weights are read: the architecture
comes from the preset table of `hmx_jax.models.config`.

Programs, at the preset's shapes (B = prompts_per_step * num_generations
rows, P = sampling.max_prompt_len, N = sampling.max_new_tokens):
  update   `learner.update_step`: the GRPO update of the train state, [B, P+N];
  prefill  the sampler's prefill: B prompts of P tokens into a P+N cache;
  decode   one step of the sampler's decode loop over that cache;
  judge    one micro-batch of the rubric judge (`scoring._score_batch`):
           the rubric's cached prefix, then the conversation and answer.
For each: the compiler's per-chip bytes (arguments, outputs, temporaries,
aliased donations; total = arg + out + temp - alias), plus the arrays that
stay in HBM while it runs without being its arguments (the train state, the
reference and rollout copies of the weights), against the chip's usable HBM;
the FLOPs and bytes accessed with every layer and loop trip counted (from
one- and two-layer compiles, `counting_programs`); and a roofline time from
the chip's peak bf16 FLOP/s and HBM bandwidth. A program the compiler
refuses with RESOURCE_EXHAUSTED does not fit; it is not a crash.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import optax

from hmx_jax import learner, sampling, scoring, sharding
from hmx_jax.errors import UserError
from hmx_jax.models import decoder
from hmx_jax.models.config import PRESETS, ModelConfig

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip: what the roofline and the fit check need."""
  peak_bf16_flops: float  # FLOP/s
  hbm_bandwidth: float  # bytes/s
  usable_hbm: float  # bytes the compiler lets a program use


# Peak bf16 FLOP/s and HBM bandwidth per chip: the Cloud TPU system
# architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e).
# Usable HBM: the capacity libtpu's compiler reports for the chip (its
# out-of-memory message "... of <capacity> hbm"), a little below the
# nominal 32 / 16 / 95 / 32 GB.
CHIPS = {
    "v4": Chip(275e12, 1228e9, 30.75 * GIB),
    "v5e": Chip(197e12, 819e9, 15.75 * GIB),
    "v5p": Chip(459e12, 2765e9, 95.74 * GIB),
    "v6e": Chip(918e12, 1640e9, 31.25 * GIB),
}

# gcloud accelerator types -> (chip, topology name, chip config). A v4 or
# v5p type counts TensorCores (two per chip, one megacore device); v5e and
# v6e count chips.
SLICES = {
    "v4-8": ("v4", "v4:2x2x1", "megacore"),
    "v4-16": ("v4", "v4:2x2x2", "megacore"),
    "v4-32": ("v4", "v4:2x2x4", "megacore"),
    "v4-64": ("v4", "v4:2x4x4", "megacore"),
    "v5litepod-4": ("v5e", "v5e:2x2", None),
    "v5litepod-8": ("v5e", "v5e:2x4", None),
    "v5litepod-16": ("v5e", "v5e:4x4", None),
    "v5litepod-32": ("v5e", "v5e:4x8", None),
    "v5litepod-64": ("v5e", "v5e:8x8", None),
    "v5p-8": ("v5p", "v5:2x2x1", None),
    "v5p-16": ("v5p", "v5:2x2x2", None),
    "v5p-32": ("v5p", "v5:2x2x4", None),
    "v5p-64": ("v5p", "v5:2x4x4", None),
    "v5p-128": ("v5p", "v5:4x4x4", None),
    "v6e-4": ("v6e", "v6e:2x2", None),
    "v6e-8": ("v6e", "v6e:2x4", None),
    "v6e-16": ("v6e", "v6e:4x4", None),
    "v6e-32": ("v6e", "v6e:4x8", None),
    "v6e-64": ("v6e", "v6e:8x8", None),
}

# The judge's shared prefix (system turn and rubric), in tokens, as
# `scoring` buckets it: the longest is 1,124 characters (feelings), under
# 300 tokens.
JUDGE_PREFIX_LEN = 512
# The judge context beyond the prompt and the answer (template, headers).
JUDGE_TEMPLATE_LEN = 64
# Score digits 1-5, padded to a power of two as `scoring` pads options.
JUDGE_OPTIONS = 8


@dataclasses.dataclass
class Report:
  """One compiled program's numbers (bytes per chip)."""
  name: str
  arguments: int = 0
  outputs: int = 0
  temporaries: int = 0
  aliased: int = 0
  resident: int = 0
  flops: float = 0.0
  bytes_accessed: float = 0.0
  seconds: float = 0.0  # roofline estimate of one run
  flop_seconds: float = 0.0  # its FLOPs alone at the chip's peak
  counted: bool = False  # FLOPs count every layer (else one layer's)
  error: str = ""  # the compiler's reason when it does not fit

  @property
  def program_total(self) -> int:
    return self.arguments + self.outputs + self.temporaries - self.aliased

  @property
  def total(self) -> int:
    return self.program_total + self.resident


def prepare_environment(accelerator_type: str) -> None:
  """libtpu settings for compiling without TPUs; before the plugin loads.

  libtpu otherwise asks the GCE metadata server for the slice it runs on and
  warns when there is none, and takes a machine-wide lock that a second
  process (or a run on the CPU) would hold.
  """
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def libtpu_available() -> bool:
  import importlib.util
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(accelerator_type: str):
  """The devices of a TPU slice that is not attached (needs libtpu)."""
  from jax.experimental import topologies
  _, name, chip_config = SLICES[accelerator_type]
  kwargs = {"chip_config_name": chip_config} if chip_config else {}
  return topologies.get_topology_desc(name, "tpu", **kwargs).devices


def _per_chip_bytes(tree) -> int:
  """Bytes one chip holds of a tree of ShapeDtypeStructs with shardings."""
  total = 0
  for x in _leaves(tree):
    shard = x.sharding.shard_shape(x.shape)
    total += math.prod(shard) * x.dtype.itemsize
  return total


def _leaves(tree):
  return jax.tree.leaves(tree)


def _abstract(tree, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)


def _cost(compiled) -> tuple[float, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0] if cost else {}
  cost = cost or {}
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


# libtpu's out-of-memory messages, in the two forms seen.
_EXHAUSTED = (
    re.compile(r"required for (?P<what>[\w ]+) \((?P<used>[\d.]+[KMGT]?)\) "
               r"exceeds available HBM \((?P<have>[\d.]+[KMGT]?)\)"),
    re.compile(r"Used (?P<used>[\d.]+[KMGT]?) of (?P<have>[\d.]+[KMGT]?) "
               r"hbm"))


def _exhausted(e: Exception) -> bool:
  """The compiler's out-of-memory answer (XlaRuntimeError; its type moves
  between versions)."""
  return "RESOURCE_EXHAUSTED" in str(e)


def _compile(name: str, lower, chip: Chip, resident: int) -> Report:
  """Lowers and compiles one program; RESOURCE_EXHAUSTED is a report."""
  print(f"  compiling {name} ...", end="", flush=True)
  start = time.time()
  report = Report(name, resident=resident)
  try:
    compiled = lower().compile()
  except Exception as e:
    if not _exhausted(e):
      raise
    text = str(e)
    found = next((m for m in (p.search(text) for p in _EXHAUSTED) if m),
                 None)
    if found:
      what = found.groupdict().get("what") or "its buffers"
      report.error = (f"{found['used']} for {what}, over the "
                      f"{found['have']} of HBM (the compiler's "
                      "RESOURCE_EXHAUSTED)")
    else:
      report.error = text.strip().splitlines()[0][:300]
    print(f" does not fit ({time.time() - start:.0f}s)", flush=True)
    return report
  memory = compiled.memory_analysis()
  report.arguments = int(memory.argument_size_in_bytes)
  report.outputs = int(memory.output_size_in_bytes)
  report.temporaries = int(memory.temp_size_in_bytes)
  report.aliased = int(memory.alias_size_in_bytes)
  report.flops, report.bytes_accessed = _cost(compiled)
  print(f" {time.time() - start:.0f}s", flush=True)
  return report


# Compiler options of the programs that count FLOPs: libtpu otherwise turns
# a matmul over gathered (or scattered) FSDP shards into a loop over the
# shards ("windowed einsum"), and the cost analysis counts a loop's body
# once (measured: a Qwen3-0.6B layer's prefill on v5e-8, 74 GFLOP per chip
# with them, 137 without, 137 by hand).
COUNTING_OPTIONS = {
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}


def counting_programs(c, config: ModelConfig, mesh, shapes: Shapes):
  """{name: (lower with one layer, lower with two)}: the programs whose
  costs count every layer and every loop trip.

  XLA's cost analysis counts a while loop's body once, and the decoder runs
  its layers as a scan. A program's cost is linear in its layers (each adds
  its own matmuls, and its share of elementwise work such as the optimizer's
  update), so the same program with one layer and with two, unrolled
  (`scan_layers=False`), gives the cost of `config.num_layers`:
  cost(L) = cost(1) + (L - 1) * (cost(2) - cost(1)). The other loops run
  once in them: one log-prob chunk (its logits whole) and one micro-batch
  (the update's cost is then its micro-batch's times their number).
  """
  micro_batches = c.train.gradient_accumulation_steps
  c = c.copy_and_resolve_references()
  with c.unlocked():
    c.train.logps_chunk = shapes.new_tokens
    c.train.gradient_accumulation_steps = 1
  micro_batch = dataclasses.replace(shapes,
                                    batch=shapes.batch // micro_batches)
  lists = []
  for layers in (1, 2):
    small = config.replace(num_layers=layers, scan_layers=False)
    lists.append({name: lower for name, lower, _ in
                  programs(c, small, mesh, shapes)[0]})
    if micro_batches > 1:
      lists[-1]["update"] = next(
          lower for name, lower, _ in programs(c, small, mesh,
                                               micro_batch)[0]
          if name == "update")
  return {name: (lists[0][name], lists[1][name]) for name in lists[0]}


def _counted_cost(lowers, layers: int) -> tuple[float, float] | None:
  """FLOPs and bytes accessed with `layers` layers, from a pair of
  `counting_programs`; None when one of them does not fit the chip or keeps
  a loop."""
  costs = []
  for lower in lowers:
    try:
      compiled = lower().compile(compiler_options=COUNTING_OPTIONS)
    except Exception as e:
      if not _exhausted(e):
        raise
      return None
    if re.search(r"\bwhile\(", compiled.as_text()):
      return None
    costs.append(_cost(compiled))
  (flops1, bytes1), (flops2, bytes2) = costs
  more = layers - 1
  return flops1 + more * (flops2 - flops1), bytes1 + more * (bytes2 - bytes1)


def _count_cost(report: Report, lowers, c, config: ModelConfig,
                chip: Chip) -> None:
  """Sets the report's FLOPs, bytes and roofline time with every layer and
  micro-batch counted (the compiled program's own count when the counting
  programs do not fit or keep a loop: a lower bound)."""
  print(f"  counting {report.name}'s FLOPs (1 and 2 layers unrolled) ...",
        end="", flush=True)
  start = time.time()
  counted = _counted_cost(lowers, config.num_layers)
  if counted is None:
    print(" not counted: the compiled program's count, a lower bound",
          flush=True)
  else:
    report.flops, report.bytes_accessed = counted
    report.counted = True
    print(f" {time.time() - start:.0f}s", flush=True)
    if report.name == "update":
      micro_batches = c.train.gradient_accumulation_steps
      # The optimizer's step, counted with each micro-batch: a few FLOPs
      # per parameter against 6 per parameter and token.
      report.flops *= micro_batches
      report.bytes_accessed *= micro_batches
  report.flop_seconds = report.flops / chip.peak_bf16_flops
  report.seconds = max(report.flop_seconds,
                       report.bytes_accessed / chip.hbm_bandwidth)


# ------------------------------------------------------------ the programs

@dataclasses.dataclass(frozen=True)
class Shapes:
  """The preset's shapes: B rows of P prompt and N completion tokens."""
  batch: int
  prompt_len: int
  new_tokens: int
  judge_batch: int
  judge_context: int
  judge_calls: int  # judge micro-batches per training step


def shapes_of(c, mesh) -> Shapes:
  """The shapes a step of config `c` runs at on `mesh`."""
  batch = c.train.prompts_per_step * c.grpo.num_generations
  shards = scoring.data_parallel_size(mesh)
  if batch % shards:
    raise UserError(f"batch of {batch} (train.prompts_per_step * "
                    "grpo.num_generations) is not divisible by the mesh's "
                    f"data-parallel size {shards}")
  prompt_len = c.sampling.max_prompt_len
  if prompt_len <= 0:
    raise UserError("sampling.max_prompt_len=0: a TPU preset pads prompts "
                    "to a fixed length; set it (e.g. 256)")
  # As `rubric.score_prompts` rounds it: a multiple of the data shards.
  judge_batch = -(-c.reward.micro_batch // shards) * shards
  new_tokens = c.sampling.max_new_tokens
  criteria = len(c.reward.criteria) if c.reward.kind == "rubric" else 0
  return Shapes(
      batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
      judge_batch=judge_batch,
      judge_context=sampling.bucket_length(prompt_len + new_tokens
                                           + JUDGE_TEMPLATE_LEN),
      judge_calls=criteria * -(-batch // judge_batch))


def loss_settings(c, prompt_len: int) -> learner.LossSettings:
  """The GRPO loss settings of config `c` (as the trainer builds them)."""
  g = c.grpo
  return learner.LossSettings(
      epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta,
      loss_type=g.loss_type, temperature=c.sampling.temperature,
      prompt_len=prompt_len, max_completion_length=c.sampling.max_new_tokens,
      micro_batches=c.train.gradient_accumulation_steps,
      logps_chunk=c.train.logps_chunk,
      sampler_is_correction=bool(g.sampler_is_correction),
      sampler_is_cap=float(g.sampler_is_cap))


@dataclasses.dataclass
class Abstract:
  """The step's arrays as ShapeDtypeStructs with their shardings."""
  state: learner.TrainState  # master params and optimizer state
  copy: object  # the compute-dtype copy (rollout, judge, reference)
  copies: int  # how many such copies a step holds beside the state


def abstract_state(c, config: ModelConfig, mesh, optimizer) -> Abstract:
  """The train state and weight copies of config `c`, placed on `mesh`."""
  abstract, logical = decoder.abstract_params(config)
  shardings = sharding.tree_shardings(logical, abstract, mesh)
  params = _abstract(abstract, shardings)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_state = optax.tree_map_params(
      optimizer, lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                   sharding=s),
      jax.eval_shape(optimizer.init, params), shardings,
      transform_non_params=lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=replicated))
  dtype = c.model.compute_dtype
  copy = _abstract(jax.eval_shape(learner.cast_params, params, dtype),
                   shardings)
  # The frozen reference (KL, or the `initial` judge) and, with a compute
  # dtype below the masters', the rollout's cast copy.
  copies = int(bool(c.grpo.beta) or c.reward.judge == "initial")
  copies += int(dtype != c.model.param_dtype)
  return Abstract(learner.TrainState(params, opt_state), copy, copies)


def programs(c, config: ModelConfig, mesh, shapes: Shapes):
  """(name, lower() -> Lowered, resident bytes) of each program."""
  optimizer = learner.make_optimizer(c)
  arrays = abstract_state(c, config, mesh, optimizer)
  state_bytes = _per_chip_bytes(arrays.state)
  copy_bytes = _per_chip_bytes(arrays.copy)
  rows = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  sds = lambda shape, dtype, s=rows: jax.ShapeDtypeStruct(shape, dtype,
                                                          sharding=s)
  B, P, N = shapes.batch, shapes.prompt_len, shapes.new_tokens
  compute = config.replace(param_dtype=c.model.compute_dtype,
                           dtype=c.model.compute_dtype)

  batch = {"tokens": sds((B, P + N), jnp.int32),
           "mask": sds((B, P + N), jnp.int32),
           "completion_mask": sds((B, N), jnp.float32),
           "sampler_logps": sds((B, N), jnp.float32),
           "advantages": sds((B,), jnp.float32)}
  if c.grpo.beta:
    batch["ref_logps"] = sds((B, N), jnp.float32)
  if c.grpo.num_iterations > 1:
    batch["old_logps"] = sds((B, N), jnp.float32)
  learner_config = config.replace(dtype=c.model.compute_dtype,
                                  remat=c.model.remat)
  update = lambda: learner.update_step.lower(
      learner_config, loss_settings(c, P), optimizer, arrays.state, batch)

  prompts = sds((B, P), jnp.int32)
  prefill = lambda: jax.jit(sampling.prefill, static_argnums=(0, 4)).lower(
      compute, arrays.copy, prompts, prompts, P + N)
  cache_shape = (config.num_layers, B, config.num_kv_heads, P + N,
                 config.head_dim)
  cache_sharding = NamedSharding(mesh, sharding.logical_to_spec(
      decoder.CACHE_LOGICAL_AXES, shape=cache_shape, mesh=mesh))
  cache = {k: sds(cache_shape, jnp.dtype(compute.dtype), cache_sharding)
           for k in ("k", "v")}
  decode = lambda: jax.jit(sampling.decode_step, static_argnums=0,
                           donate_argnums=2).lower(
      compute, arrays.copy, cache, sds((B, P + N), jnp.int32),
      sds((B,), jnp.int32), sds((B, 1), jnp.int32),
      sds((), jnp.int32, replicated))

  J, C = shapes.judge_batch, shapes.judge_context
  prefix_shape = (config.num_layers, 1, config.num_kv_heads,
                  JUDGE_PREFIX_LEN, config.head_dim)
  prefix_sharding = NamedSharding(mesh, sharding.logical_to_spec(
      decoder.CACHE_LOGICAL_AXES, shape=prefix_shape, mesh=mesh))
  prefix = {k: sds(prefix_shape, jnp.dtype(compute.dtype), prefix_sharding)
            for k in ("k", "v")}
  empty = sds((J, 0), jnp.int32)
  judge = lambda: scoring._score_batch.lower(
      compute, arrays.copy, prefix,
      sds((1, JUDGE_PREFIX_LEN), jnp.int32, replicated),
      sds((J, C), jnp.int32), sds((J, C), jnp.int32),
      sds((J, JUDGE_OPTIONS), jnp.int32), empty, empty, empty, empty)

  # What else is in HBM while each runs: the update has the weight copies
  # beside it; the sampler and the judge, the train state and the copies
  # other than the one they take.
  others = state_bytes + max(arrays.copies - 1, 0) * copy_bytes
  result = [("update", update, arrays.copies * copy_bytes),
            ("prefill", prefill, others),
            ("decode", decode, others)]
  if shapes.judge_calls:
    result.append(("judge", judge, others))
  return result, state_bytes


# --------------------------------------------------------------- the command

@dataclasses.dataclass
class Result:
  """What `compile_preset` measured."""
  reports: list[Report]
  chip_name: str
  chip: Chip
  shapes: Shapes
  state_bytes: int  # the train state (params + optimizer) per chip

  def too_big(self) -> list[Report]:
    return [r for r in self.reports
            if r.error or r.total > self.chip.usable_hbm]


PROGRAMS = ("update", "prefill", "decode", "judge")


def compile_preset(c, config_spec: str, only: tuple[str, ...] = ()
                   ) -> Result:
  """Compiles the programs of TPU preset `c` for its slice.

  Args:
    c: the config.
    config_spec: where it came from, for messages.
    only: compile just these of `PROGRAMS` (default: all).

  Raises:
    UserError: the preset has no `tpu` section, an unknown accelerator type,
      a model that is not a preset, shapes that do not divide the mesh, or
      no libtpu.
  """
  unknown = sorted(set(only) - set(PROGRAMS))
  if unknown:
    raise UserError(f"--programs: {', '.join(unknown)} not among "
                    f"{', '.join(PROGRAMS)}")
  tpu = c.get("tpu")
  accelerator = tpu.get("accelerator_type") if tpu else None
  if not accelerator:
    raise UserError(f"{config_spec}: not a TPU preset (no tpu."
                    "accelerator_type; base_config.tpu sets it)")
  if accelerator not in SLICES:
    raise UserError(f"{config_spec}: tpu.accelerator_type={accelerator!r} "
                    f"is not one of {', '.join(SLICES)}")
  if c.model.spec not in PRESETS:
    raise UserError(f"{config_spec}: model.spec={c.model.spec!r} is not a "
                    f"preset of models/config.py ({', '.join(PRESETS)}); aot "
                    "compiles a preset's architecture")
  if not libtpu_available():
    raise UserError("aot needs libtpu: pip install -e '.[tpu]'")
  prepare_environment(accelerator)
  chip_name = SLICES[accelerator][0]
  chip = CHIPS[chip_name]
  config = PRESETS[c.model.spec].replace(param_dtype=c.model.param_dtype,
                                         dtype=c.model.param_dtype)
  print(f"{config_spec}: building the {accelerator} topology ...", flush=True)
  devices = topology_devices(accelerator)
  mesh = sharding.make_mesh(dict(c.mesh.shape) or None, devices=devices)
  shapes = shapes_of(c, mesh)
  print(f"{c.model.spec} on {accelerator} ({len(devices)} {chip_name} "
        f"chips, mesh {dict(mesh.shape)}); batch {shapes.batch} x "
        f"({shapes.prompt_len} prompt + {shapes.new_tokens} new tokens), "
        f"remat {c.model.remat}, compute {c.model.compute_dtype}", flush=True)
  listed, state_bytes = programs(c, config, mesh, shapes)
  counting = counting_programs(c, config, mesh, shapes)
  reports = []
  with sharding.use_mesh(mesh):
    for name, lower, resident in listed:
      if only and name not in only:
        continue
      report = _compile(name, lower, chip, resident)
      if not report.error:
        _count_cost(report, counting[name], c, config, chip)
      reports.append(report)
  return Result(reports, chip_name, chip, shapes, state_bytes)


def run(c, config_spec: str, only: tuple[str, ...] = ()) -> int:
  """`hmx-feel aot`: compiles preset `c` (`only` some programs), prints the
  numbers.

  Returns:
    0 when every program fits the chip's HBM, 1 when one does not.
  """
  result = compile_preset(c, config_spec, only)
  chip, name = result.chip, result.chip_name
  print_reports(result)
  for r in result.too_big():
    why = r.error or (f"{r.total / GIB:.2f} GiB per chip "
                      f"({r.program_total / GIB:.2f} GiB program + "
                      f"{r.resident / GIB:.2f} GiB resident), over the "
                      f"{chip.usable_hbm / GIB:.2f} GiB of {name} HBM")
    print(f"does not fit: {r.name} needs {why}", flush=True)
  if result.too_big():
    return 1
  print(f"fits: every program within {chip.usable_hbm / GIB:.2f} GiB per "
        "chip", flush=True)
  return 0


def step_seconds(reports, shapes: Shapes, iterations: int = 1,
                 flops_only: bool = False) -> float:
  """Roofline time of one step: prefill + N decode steps, the judge's
  micro-batches, the update (the reference forward not counted); with
  `flops_only`, of their FLOPs alone."""
  t = {r.name: r.flop_seconds if flops_only else r.seconds for r in reports}
  return (t.get("prefill", 0.0) + shapes.new_tokens * t.get("decode", 0.0)
          + shapes.judge_calls * t.get("judge", 0.0)
          + iterations * t.get("update", 0.0))


def print_reports(result: Result) -> None:
  """The table of `hmx-feel aot` (GiB per chip)."""
  chip, reports, shapes = result.chip, result.reports, result.shapes
  g = lambda b: f"{b / GIB:8.2f}"
  print(f"train state (params + optimizer) {result.state_bytes / GIB:.2f} "
        "GiB per chip")
  print(f"{'program':8s} {'args':>8s} {'out':>8s} {'temp':>8s} {'alias':>8s} "
        f"{'resident':>8s} {'total':>8s} {'HBM':>8s} {'GFLOP':>10s} "
        f"{'GB':>8s} {'ms':>9s}  (GiB per chip; GFLOP and GB accessed "
        "per chip)")
  for r in reports:
    if r.error:
      print(f"{r.name:8s} does not fit ({r.error})")
      continue
    print(f"{r.name:8s} {g(r.arguments)} {g(r.outputs)} {g(r.temporaries)} "
          f"{g(r.aliased)} {g(r.resident)} {g(r.total)} "
          f"{g(chip.usable_hbm)} {r.flops / 1e9:10.1f} "
          f"{r.bytes_accessed / 1e9:8.2f} {r.seconds * 1e3:9.3f}")
  names = {r.name for r in reports}
  if not any(r.error for r in reports) and names >= {"update", "prefill",
                                                      "decode"}:
    print(f"estimated step: {step_seconds(reports, shapes):.2f} s (roofline: "
          f"prefill + {shapes.new_tokens} decode steps + "
          f"{shapes.judge_calls} judge batches + update); their FLOPs alone "
          f"at peak: {step_seconds(reports, shapes, flops_only=True):.2f} s. "
          "Bytes are XLA's estimate, which counts every operand of a fusion "
          "whole (a cache updated in place as the whole buffer): high for "
          "the decode", flush=True)
  uncounted = [r.name for r in reports if not r.error and not r.counted]
  if uncounted:
    print(f"note: GFLOP and times of {', '.join(uncounted)} count one "
          "layer (their counting programs did not fit): lower bounds",
          flush=True)
