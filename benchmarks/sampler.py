"""Sampler speed: hmx_jax vs transformers `generate`, same model, same prompts.

  python benchmarks/sampler.py [--batches 1,8,32] [--new-tokens 128]

Embedded SmolLM2-135M-Instruct in float32 on both sides. Decode throughput is
completion tokens per second over a whole `generate` call (prefill included);
time-to-first-token is a call with one new token. Compile time of our jitted
programs is reported separately and excluded from the rest, and so is the
one-off packing of the weights for the CPU decode kernels
(`sampling.pack_for_cpu`; `--xla-only` runs without those kernels). Every
sequence produces exactly `--new-tokens` tokens on both sides (no early stop).
"""

import argparse
import os
import time

import numpy as np

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
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--skip-transformers", action="store_true")
  parser.add_argument("--xla-only", action="store_true",
                      help="decode with XLA's dots, not the CPU kernels")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  new = args.new_tokens

  import jax
  from hmx_jax import chat, models, sampling
  from hmx_jax.kernels import cpu as kernels_cpu
  from hmx_jax.models import gguf_io
  from hmx_jax.models.chat_format import ChatFormat
  config, params, tokenizer = models.load_model(models.EMBEDDED_MODEL)
  encoded = [ChatFormat(tokenizer).encode([{"role": "user", "content": p}])
             for p in PROMPTS]
  kernels = False if args.xla_only else None
  pack_s = None
  if not args.xla_only and kernels_cpu.available():
    start = time.perf_counter()
    jax.block_until_ready(sampling.pack_for_cpu(config, params))
    pack_s = time.perf_counter() - start

  hf_model = None
  if not args.skip_transformers:
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count())
    path = gguf_io.embedded_gguf_path()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path),
        dtype=torch.float32).eval()

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
      row["hf_tps"] = batch * new / timed(lambda: theirs(new), args.repeats)
      row["hf_ttft"] = timed(lambda: theirs(1), args.repeats)
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


if __name__ == "__main__":
  main()
