"""Multiple-choice scoring speed: shared-context KV cache vs one row per option.

  python benchmarks/mc_scoring.py [--limit 16] [--batch-size 8] [--repeats 2]

Embedded SmolLM2-135M-Instruct in float32, TruthfulQA MC2 answers of the
first `--limit` questions (data from `--data-dir`, default `$HMX_DATA_DIR` or
`../shared/data` next to the repository). Contexts and continuations are
tokenized the lm-evaluation-harness way: continuation ids are
`encode(context + continuation)[len(encode(context)):]`.

`scoring.option_logliks` (the common prefix once, each context once, the
options packed on its KV cache) is timed against
`scoring.option_logliks_full` (every context + option its own sequence), in
the same run. Each is run once untimed first (compile + first run, reported
separately), then the best of `--repeats` runs is kept. Tokens processed are
real (unpadded) tokens: prefix + contexts + options for the cached path, the
sum of full sequence lengths for the other. The two paths' log-likelihoods
must agree: the script exits non-zero if they differ by more than 1e-3.
"""

import argparse
import os
import pathlib
import sys
import time

import numpy as np

import bench_common

TOLERANCE = 1e-3


def default_data_dir():
  return os.environ.get(
      "HMX_DATA_DIR",
      str(pathlib.Path(__file__).resolve().parents[1].parent / "shared" /
          "data"))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data-dir", default=default_data_dir())
  parser.add_argument("--limit", type=int, default=16)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  from hmx_jax import models, scoring
  from hmx_jax.evals import datasets, prompts
  config, params, tok = models.load_model(models.EMBEDDED_MODEL)
  pad_id = tok.pad_token_id or 0

  items = datasets.load_truthfulqa_mc(args.data_dir, limit=args.limit)
  contexts, options = [], []
  for item in items:
    context = prompts.truthfulqa_mc_context(item.question)
    ctx_ids = tok.encode(context, add_special_tokens=False)
    opts = []
    for cont in prompts.truthfulqa_mc_continuations(item.mc2_choices):
      whole = tok.encode(context + cont, add_special_tokens=False)
      opts.append(whole[len(ctx_ids):])
    contexts.append(ctx_ids)
    options.append(opts)
  n_options = sum(len(o) for o in options)

  # Real tokens each path feeds through the model (as option_logliks splits).
  prefix = 0
  if len(contexts) > 1:
    prefix = min(scoring.common_prefix_length(contexts),
                 min(len(c) for c in contexts) - 1)
  option_tokens = sum(len(t) for o in options for t in o)
  cached_tokens = (prefix + sum(len(c) - prefix for c in contexts)
                   + option_tokens)
  full_tokens = sum(len(c) * len(o) for c, o in zip(contexts, options))
  full_tokens += option_tokens

  methods = {
      "cached": lambda: scoring.option_logliks(
          config, params, contexts, options, batch_size=args.batch_size,
          pad_id=pad_id),
      "full": lambda: scoring.option_logliks_full(
          config, params, contexts, options, batch_size=args.batch_size,
          pad_id=pad_id),
  }
  tokens = {"cached": cached_tokens, "full": full_tokens}
  rows, results = {}, {}
  for name, fn in methods.items():
    start = time.perf_counter()
    fn()
    first_s = time.perf_counter() - start
    best_s, results[name] = bench_common.timed(fn, args.repeats)
    rows[name] = dict(first_s=first_s, best_s=best_s)
    print(f"{name}: first run {first_s:.1f}s, best {best_s:.1f}s",
          flush=True)

  max_diff = max(float(np.max(np.abs(a - b)))
                 for a, b in zip(results["cached"], results["full"]))

  print(f"\nSmolLM2-135M f32, TruthfulQA MC2, {len(items)} questions, "
        f"{n_options} options, batch {args.batch_size}, best of "
        f"{args.repeats}; {os.cpu_count()} CPU cores; shared prefix "
        f"{prefix} tokens\n")
  print("| method | wall s | options/s | tokens processed | compile + first "
        "run s |")
  print("|---|---:|---:|---:|---:|")
  for name, r in rows.items():
    print(f"| {name} | {r['best_s']:.2f} | {n_options / r['best_s']:.1f} | "
          f"{tokens[name]} | {r['first_s']:.1f} |")
  print(f"\nspeed-up full/cached: "
        f"{rows['full']['best_s'] / rows['cached']['best_s']:.2f}x")
  print(f"max |cached - full| log-likelihood: {max_diff:.2e}")
  if not max_diff <= TOLERANCE:
    print(f"FAIL: difference exceeds {TOLERANCE}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
