"""GRPO update: achieved FLOP/s against this machine's measured f32 matmul peak.

  python benchmarks/update_flops.py [--prompts 4] [--generations 4]
      [--new-tokens 64] [--matmul-size 4096] [--repeats 3]
      [--remat none|full|dots]

The update is `learner.update_step` (forward, backward and AdamW of the
dapo loss with beta 0.04, float32) on the batch shape of
`benchmarks/grpo_step.py`: `--prompts` x `--generations` rows of the first
prompts of the embedded train set, left-padded to the sampler's length
bucket, plus `--new-tokens` completion tokens; embedded SmolLM2-135M-Instruct.
The reference forward (`learner.sequence_logps`, no gradient) is measured the
same way. `--remat` sets `model.remat` for the update (default none, as
`benchmarks/grpo_step.py`); with recomputation, XLA's FLOPs include the
recomputed forward.

FLOPs are XLA's: `jax.jit(...).lower(...).compile().cost_analysis()
["flops"]`. XLA's cost analysis counts the body of a while loop once,
whatever its trip count, and the decoder runs its layers as a scan (a while
loop): so the FLOPs come from the same function compiled with the layer scan
unrolled (`nn.scan(..., unroll=num_layers)`, patched in this process only),
while the time is the library's program as the trainer runs it (layers
scanned). The scanned program's own count is printed beside it, with a
rough count of 2 FLOPs per multiply-add of the weight matmuls (forward once,
backward twice), for comparison.

The peak is the best of `--repeats` float32 matmuls of two
`--matmul-size`-square matrices, with `jnp.dot` (XLA) and `np.dot` (the
BLAS numpy links), measured in the same run before and after the update's
runs; the largest is the peak. The
update and reference times are the best of `--repeats` calls after a
compiling one. The last line printed is a JSON object with every number.
"""

import argparse
import contextlib
import json
import os
import time

import numpy as np

import bench_common


def best_time(fn, repeats):
  """Best wall time of `repeats` calls."""
  return bench_common.timed(fn, repeats)[0]


def matmul_peak(n, repeats):
  """{"jax": FLOP/s, "numpy": FLOP/s} of an n x n x n float32 matmul."""
  import jax
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  flops = 2.0 * n ** 3
  a_j, b_j = jnp.asarray(a), jnp.asarray(b)
  dot = jax.jit(jnp.dot)
  dot(a_j, b_j).block_until_ready()
  jax_s = best_time(lambda: dot(a_j, b_j).block_until_ready(), repeats)
  np.dot(a, b)
  numpy_s = best_time(lambda: np.dot(a, b), repeats)
  return {"jax": flops / jax_s, "numpy": flops / numpy_s}


@contextlib.contextmanager
def unrolled_layer_scan():
  """Makes `flax.linen.scan` unroll its loop fully while the block runs."""
  import flax.linen as nn
  original = nn.scan

  def scan(*args, **kwargs):
    kwargs["unroll"] = kwargs.get("length") or 1
    return original(*args, **kwargs)
  nn.scan = scan
  try:
    yield
  finally:
    nn.scan = original


def xla_flops(compiled):
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0]
  return float(cost["flops"])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--prompts", type=int, default=4)
  parser.add_argument("--generations", type=int, default=4)
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--beta", type=float, default=0.04)
  parser.add_argument("--matmul-size", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--remat", choices=("none", "full", "dots"),
                      default="none")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  from hmx_jax import base_config, learner, models, sampling
  from hmx_jax.data import load_prompts
  from hmx_jax.models.chat_format import ChatFormat

  peak = matmul_peak(args.matmul_size, args.repeats)
  peak_flops = max(peak.values())
  print(f"f32 matmul {args.matmul_size}^3: jax {peak['jax'] / 1e9:.1f} "
        f"GFLOP/s, numpy {peak['numpy'] / 1e9:.1f} GFLOP/s", flush=True)

  config, params, tokenizer = models.load_model(models.EMBEDDED_MODEL)
  chat = ChatFormat(tokenizer)
  lengths = [len(chat.encode(p.messages))
             for p in load_prompts("train")[:args.prompts]]
  P = sampling.bucket_length(max(lengths), half_steps=True)
  N, B = args.new_tokens, args.prompts * args.generations
  rng = np.random.default_rng(0)
  mask = np.ones((B, P + N), np.int32)
  for row in range(B):  # Left padding, as the rollout leaves it.
    mask[row, :P - lengths[(row // args.generations) % len(lengths)]] = 0
  batch = {
      "tokens": jnp.asarray(rng.integers(0, config.vocab_size, (B, P + N)),
                            jnp.int32),
      "mask": jnp.asarray(mask),
      "completion_mask": jnp.ones((B, N), jnp.float32),
      "sampler_logps": jnp.asarray(-rng.random((B, N)) * 3, jnp.float32),
      "advantages": jnp.asarray(rng.standard_normal(B), jnp.float32),
      "ref_logps": jnp.asarray(-rng.random((B, N)) * 3, jnp.float32),
  }
  c = base_config.get_config(models.EMBEDDED_MODEL)
  optimizer = learner.make_optimizer(c)
  settings = learner.LossSettings(
      epsilon=c.grpo.epsilon, epsilon_high=c.grpo.epsilon_high,
      beta=args.beta, loss_type=c.grpo.loss_type, temperature=1.0,
      prompt_len=P, max_completion_length=N, micro_batches=1,
      logps_chunk=c.train.logps_chunk)
  state = learner.TrainState(params, optimizer.init(params))
  # The update's config, as the trainer builds it (`learner_config`).
  update_config = config.replace(remat=args.remat)
  ref_args = (P, 1.0, c.train.logps_chunk)

  # A rough count: weight matmuls only, 2 FLOPs per multiply-add; the output
  # projection on completion positions only; backward twice the forward.
  embed = config.vocab_size * config.hidden_size
  weights = sum(x.size for x in jax.tree.leaves(params)) - embed
  if not config.tie_embeddings:
    weights -= embed
  forward_estimate = 2.0 * (weights * B * (P + N) + embed * B * N)

  times = {}
  start = time.perf_counter()
  state, _ = learner.update_step(update_config, settings, optimizer, state,
                                 batch)
  jax.block_until_ready(state)
  times["update_first_s"] = time.perf_counter() - start

  def update():
    nonlocal state
    state, metrics = learner.update_step(update_config, settings, optimizer,
                                         state, batch)
    jax.block_until_ready((state, metrics))
  times["update_s"] = best_time(update, args.repeats)
  params = state.params

  def reference():
    jax.block_until_ready(learner.sequence_logps(config, params, batch,
                                                 *ref_args))
  reference()
  times["reference_s"] = best_time(reference, args.repeats)

  # The timed programs above are the library's own (layer scan). Now the
  # FLOPs: the same functions under new names (so that JAX traces them
  # afresh, not from its cache of the timed ones), with the scan unrolled.
  scanned_flops = xla_flops(learner.update_step.lower(
      update_config, settings, optimizer, state, batch).compile())
  start = time.perf_counter()
  with unrolled_layer_scan():
    update_flops = xla_flops(jax.jit(
        lambda *a: learner.update_step.__wrapped__(*a),
        static_argnums=(0, 1, 2)).lower(
            update_config, settings, optimizer, state, batch).compile())
    ref_flops = xla_flops(jax.jit(
        lambda *a: learner.sequence_logps.__wrapped__(*a),
        static_argnums=(0, 3, 4, 5)).lower(
            config, params, batch, *ref_args).compile())
  unrolled_compile_s = time.perf_counter() - start
  # The peak again, after the update's runs: the better of the two.
  again = matmul_peak(args.matmul_size, args.repeats)
  peak = {k: max(v, again[k]) for k, v in peak.items()}
  peak_flops = max(peak.values())

  rows = {
      "update": (update_flops, times["update_s"], 3 * forward_estimate),
      "reference": (ref_flops, times["reference_s"], forward_estimate),
  }
  print(f"\nSmolLM2-135M f32, batch {B} x ({P} prompt + {N} completion) "
        f"tokens, update remat {args.remat}; best of {args.repeats}; "
        f"{os.cpu_count()} CPU cores; "
        f"measured f32 matmul peak {peak_flops / 1e9:.1f} GFLOP/s "
        f"(jax {peak['jax'] / 1e9:.1f}, numpy {peak['numpy'] / 1e9:.1f})\n")
  print("| program | XLA GFLOP | seconds | GFLOP/s | fraction of matmul peak "
        "| weight-matmul estimate GFLOP |")
  print("|---|---:|---:|---:|---:|---:|")
  summary = {"benchmark": "update_flops", "remat": args.remat,
             "batch": B, "prompt_len": P,
             "new_tokens": N, "matmul_size": args.matmul_size,
             "peak_flops": peak_flops, "peak_jax_flops": peak["jax"],
             "peak_numpy_flops": peak["numpy"],
             "scanned_program_xla_flops": scanned_flops,
             "unrolled_compile_s": unrolled_compile_s, **times}
  for name, (flops, seconds, estimate) in rows.items():
    achieved = flops / seconds
    print(f"| {name} | {flops / 1e9:.1f} | {seconds:.2f} | "
          f"{achieved / 1e9:.1f} | {achieved / peak_flops * 100:.0f}% | "
          f"{estimate / 1e9:.1f} |")
    summary[name] = {"flops": flops, "seconds": seconds,
                     "flops_per_s": achieved,
                     "fraction_of_peak": achieved / peak_flops,
                     "estimate_flops": estimate}
  print(f"\nthe scanned update as compiled counts {scanned_flops / 1e9:.1f} "
        "GFLOP (each while-loop body once); first call (compile) "
        f"{times['update_first_s']:.1f} s")
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
