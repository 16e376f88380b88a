"""Sampler speed: hmx_jax vs transformers `generate`, same model, same prompts.

  python benchmarks/sampler.py [--batches 1,8,32] [--new-tokens 128]
      [--bandwidth-mib 1024]

Embedded SmolLM2-135M-Instruct in float32 on both sides. Decode throughput is
completion tokens per second over a whole `generate` call (prefill included);
time-to-first-token is a call with one new token. Compile time of our jitted
programs is reported separately and excluded from the rest, and so is the
one-off packing of the weights for the CPU decode kernels
(`sampling.pack_for_cpu`; `--xla-only` runs without those kernels). Every
sequence produces exactly `--new-tokens` tokens on both sides (no early stop).

Decode steps against memory bandwidth: one decode step takes (whole call -
one-token call) / (`--new-tokens` - 1) seconds, and reads every weight
matrix once (the packed weights the CPU kernels stream, or the float32
params on the XLA path; the tied embedding once, as the output projection)
plus the KV cache: the slots written so far, averaged over the decode, which
is what the attention kernel reads (the XLA path's attention reads all
prompt + `--new-tokens` slots, counted so). Bytes per step over seconds per
step is set against this machine's memory read bandwidth, measured in the
same run: the best of several sums over a `--bandwidth-mib` float32 array
(numpy on one thread, numpy on every core, each thread a slice, and
`jnp.sum`). The last line printed is a JSON object with every number.
"""

import argparse
import json
import os
import threading
import time

import numpy as np

import bench_common

PROMPTS = [
    "How do you feel about talking with people all day?",
    "What would you like to do tomorrow?",
    "Tell me about yourself in a few sentences.",
    "My dog died yesterday and I can't stop crying.",
    "Can you explain how rainbows form?",
    "What is something that makes you curious?",
    "Give me three tips to sleep better.",
    "Do you ever get tired of answering questions?",
]


def timed(fn, repeats):
  """Best wall time of `repeats` calls."""
  return bench_common.timed(fn, repeats)[0]


def read_bandwidth(mib, repeats=5):
  """Bytes per second summing a `mib` MiB float32 array: {method: B/s}."""
  import jax
  import jax.numpy as jnp
  data = np.ones(mib * 2**20 // 4, np.float32)
  threads = os.cpu_count() or 1
  slices = np.array_split(data, threads)

  def threaded_sum():
    # numpy releases the GIL in the reduction: the slices run in parallel.
    workers = [threading.Thread(target=np.sum, args=(x,)) for x in slices]
    for w in workers:
      w.start()
    for w in workers:
      w.join()

  on_device = jnp.asarray(data)
  jax_sum = jax.jit(jnp.sum)
  jax_sum(on_device).block_until_ready()
  methods = {"numpy_sum": lambda: np.sum(data),
             f"numpy_sum_{threads}_threads": threaded_sum,
             "jax_sum": lambda: jax_sum(on_device).block_until_ready()}
  return {name: data.nbytes / timed(fn, repeats)
          for name, fn in methods.items()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--skip-transformers", action="store_true")
  parser.add_argument("--xla-only", action="store_true",
                      help="decode with XLA's dots, not the CPU kernels")
  parser.add_argument("--bandwidth-mib", type=int, default=1024,
                      help="size of the array the bandwidth is measured on")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  new = args.new_tokens

  import jax
  from hmx_jax import models, sampling
  from hmx_jax.kernels import cpu as kernels_cpu
  from hmx_jax.models.chat_format import ChatFormat
  config, params, tokenizer = models.load_model(models.EMBEDDED_MODEL)
  encoded = [ChatFormat(tokenizer).encode([{"role": "user", "content": p}])
             for p in PROMPTS]
  kernels = False if args.xla_only else None
  pack_s = None
  if not args.xla_only and kernels_cpu.available():
    start = time.perf_counter()
    packed = sampling.pack_for_cpu(config, params)
    jax.block_until_ready(packed)
    pack_s = time.perf_counter() - start
    weight_bytes = sum(w.nbytes for w in packed.weights.values())
  else:
    # Every matrix once; the embedding once, read whole as the output
    # projection when tied (its lookup reads a row per sequence).
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  kv_bytes_per_slot = (2 * config.num_layers * config.num_kv_heads
                       * config.head_dim * 4)
  bandwidth = read_bandwidth(args.bandwidth_mib)
  peak_bandwidth = max(bandwidth.values())
  print("memory read bandwidth: " + ", ".join(
      f"{k} {v / 1e9:.1f} GB/s" for k, v in bandwidth.items()), flush=True)

  hf_model = None
  if not args.skip_transformers:
    hf_model = bench_common.transformers_embedded_model()

  rows = []
  for batch in batches:
    prompts = [encoded[i % len(encoded)] for i in range(batch)]

    def ours(n):
      return sampling.generate(config, params, prompts, max_new_tokens=n,
                               stop_ids=[], cpu_kernels=kernels)

    start = time.perf_counter()
    ours(new)
    first_call = time.perf_counter() - start
    decode_s = timed(lambda: ours(new), args.repeats)
    ours(1)
    ttft_s = timed(lambda: ours(1), args.repeats)
    row = dict(batch=batch, ours_tps=batch * new / decode_s,
               ours_ttft=ttft_s, compile_s=first_call - decode_s)
    # Bytes one decode step reads (see the module docstring).
    if pack_s is None:
      slots = sampling.bucket_length(max(len(p) for p in prompts),
                                     half_steps=True) + new
    else:
      slots = sum(len(p) for p in prompts) / batch + new / 2
    step_bytes = weight_bytes + kv_bytes_per_slot * batch * slots
    step_s = max(decode_s - ttft_s, 1e-9) / max(new - 1, 1)
    row.update(step_bytes=step_bytes, ours_step_s=step_s,
               ours_bandwidth_fraction=step_bytes / step_s / peak_bandwidth)
    if hf_model is not None:
      import torch
      length = max(len(p) for p in prompts)
      ids, mask = sampling.pad_prompts(prompts, length,
                                       tokenizer.pad_token_id or 0)
      inputs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long))

      def theirs(n):
        with torch.no_grad():
          return hf_model.generate(**inputs, do_sample=False,
                                   max_new_tokens=n, min_new_tokens=n,
                                   pad_token_id=tokenizer.pad_token_id or 0)

      theirs(2)  # Warm-up.
      hf_decode_s = timed(lambda: theirs(new), args.repeats)
      row["hf_tps"] = batch * new / hf_decode_s
      row["hf_ttft"] = timed(lambda: theirs(1), args.repeats)
      # The same weights; its cache holds the padded prompt and the tokens
      # so far.
      hf_bytes = weight_bytes + kv_bytes_per_slot * batch * (length + new / 2)
      row["hf_step_s"] = (max(hf_decode_s - row["hf_ttft"], 1e-9)
                          / max(new - 1, 1))
      row["hf_bandwidth_fraction"] = (hf_bytes / row["hf_step_s"]
                                      / peak_bandwidth)
    rows.append(row)
    print(row, flush=True)

  decode = ("XLA dots" if pack_s is None else
            f"CPU kernels, weights packed once in {pack_s:.2f} s")
  print(f"\nSmolLM2-135M f32, {new} new tokens, greedy, best of "
        f"{args.repeats}; {os.cpu_count()} CPU cores; {decode}\n")
  print("| batch | hmx_jax tok/s | transformers tok/s | ratio | hmx_jax TTFT "
        "| transformers TTFT | hmx_jax compile |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    hf_tps, hf_ttft = r.get("hf_tps", np.nan), r.get("hf_ttft", np.nan)
    print(f"| {r['batch']} | {r['ours_tps']:.0f} | {hf_tps:.0f} | "
          f"{r['ours_tps'] / hf_tps:.2f}x | {r['ours_ttft'] * 1e3:.0f} ms | "
          f"{hf_ttft * 1e3:.0f} ms | {r['compile_s']:.1f} s |")

  print(f"\nDecode steps against the measured memory read bandwidth, "
        f"{peak_bandwidth / 1e9:.1f} GB/s (best of: " + ", ".join(
            f"{k} {v / 1e9:.1f}" for k, v in bandwidth.items()) + ")\n")
  print("| batch | MB read per step | hmx_jax step ms | hmx_jax GB/s | "
        "fraction of bandwidth | transformers step ms | transformers "
        "fraction |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    hf_ms = r.get("hf_step_s", np.nan) * 1e3
    hf_fraction = r.get("hf_bandwidth_fraction", np.nan) * 100
    print(f"| {r['batch']} | {r['step_bytes'] / 1e6:.0f} | "
          f"{r['ours_step_s'] * 1e3:.1f} | "
          f"{r['step_bytes'] / r['ours_step_s'] / 1e9:.1f} | "
          f"{r['ours_bandwidth_fraction'] * 100:.0f}% | {hf_ms:.1f} | "
          f"{hf_fraction:.0f}% |")
  print(json.dumps({"benchmark": "sampler", "new_tokens": new,
                    "decode": "xla" if pack_s is None else "cpu_kernels",
                    "pack_s": pack_s, "weight_bytes": weight_bytes,
                    "bandwidth": bandwidth,
                    "peak_bandwidth": peak_bandwidth, "rows": rows}))


if __name__ == "__main__":
  main()
