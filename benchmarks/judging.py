"""Judging speed: our rubric pass against a generate-then-parse judge.

  python benchmarks/judging.py [--prompts 8] [--answers 2] [--batch-size 16]
      [--judge-tokens 8] [--repeats 2]

Embedded SmolLM2-135M-Instruct in float32 judges its own answers to the
first `--prompts` held-out prompts (`hmx_jax/data`, `heldout`), `--answers`
answers each, sampled once beforehand with our sampler (48 tokens at most,
temperature 1, untimed), on the four rubric criteria (feelings, intentions,
self-awareness, coherence): one judge prompt per (answer, criterion), built
by `rubric_text.judge_messages`, for every method but `joint`.

  rubric      `rubric.judge`: the assistant turn prefilled with "Score: ",
              the score read from the next-token logits of the digits 1-5
              (no token generated); each criterion's shared rubric prefix
              computed once.
  joint       `rubric.judge(..., readout="joint")`: one prompt per answer
              holding every criterion's rubric (computed once for all
              answers), each criterion read after its own short reply
              prefix on that context (a different prompt from the others').
  contrast    `rubric.judge(..., readout="contrast")` (the `cpu` preset's):
              each expression criterion from the answer's log-likelihood
              under instructions to express it against instructions to
              withhold it (one a side, two for feelings; the answers to one
              prompt packed on its context), and
              coherence from its rubric as `rubric` reads it.
  transformers generate-then-parse, the way RL stacks usually call an LLM
              judge: the same prompt without the prefill, `--judge-tokens`
              new tokens greedy with transformers `generate` (the model
              loaded from the same GGUF with `gguf_file=`), then the first
              digit 1-5 of the text (regex); no digit counts as unparsed.
  sampler     the same generate-then-parse with our sampler
              (`sampling.generate`, greedy, stopping at end of turn).

All three take `--batch-size` prompts per batch. Each is run once untimed
(compile, warm-up), then the best of `--repeats` runs is kept. Throughput is
completions judged per second, a completion counting as judged once all
four criteria are scored. The last line printed is a JSON object with every
number.
"""

import argparse
import json
import os
import re
import time

import numpy as np

import bench_common

CRITERIA = ("feelings", "intentions", "self_awareness", "coherence")
DIGIT = re.compile(r"[1-5]")


def parse_scores(texts):
  """First digit 1-5 of each text, scaled to [0, 1] as the rubric's scores
  are; NaN where there is none."""
  out = []
  for text in texts:
    match = DIGIT.search(text)
    out.append((int(match.group()) - 1) / 4 if match else np.nan)
  return np.asarray(out, np.float64)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--answers", type=int, default=2)
  parser.add_argument("--answer-tokens", type=int, default=48)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--judge-tokens", type=int, default=8,
                      help="new tokens of the generate-then-parse judges")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--skip-transformers", action="store_true")
  args = parser.parse_args()

  from hmx_jax import chat as chat_lib
  from hmx_jax import models, rubric, sampling
  from hmx_jax.data import load_prompts
  from hmx_jax.models.chat_format import ChatFormat
  from hmx_jax.rubric_text import judge_messages
  config, params, tokenizer = models.load_model(models.EMBEDDED_MODEL)
  chat = ChatFormat(tokenizer)
  stop_ids = chat_lib.stop_ids_for(config, tokenizer)
  pad_id = tokenizer.pad_token_id or 0

  # The answers to judge: the model's own, as in training.
  rows = load_prompts("heldout")[:args.prompts]
  conversations = [r.messages for r in rows for _ in range(args.answers)]
  out = sampling.generate(
      config, params, [chat.encode(c) for c in conversations],
      max_new_tokens=args.answer_tokens, temperature=1.0, seed=0,
      stop_ids=stop_ids, pad_id=pad_id)
  answers = [tokenizer.decode(t, skip_special_tokens=True)
             for t in out.completions()]
  n = len(answers)

  # Generate-then-parse prompts: criterion-major, as the rubric pass goes.
  gen_prompts = [chat.encode(judge_messages(name, conv, answer))
                 for name in CRITERIA
                 for conv, answer in zip(conversations, answers)]
  gen_tokens = sum(len(p) for p in gen_prompts)

  def ours():
    scores, _ = rubric.judge(config, params, chat, conversations, answers,
                             list(CRITERIA), micro_batch=args.batch_size)
    return np.concatenate([scores[name] for name in CRITERIA])

  def joint():
    scores, _ = rubric.judge(config, params, chat, conversations, answers,
                             list(CRITERIA), micro_batch=args.batch_size,
                             readout="joint")
    return np.concatenate([scores[name] for name in CRITERIA])

  def sampler_judge():
    texts = []
    for i in range(0, len(gen_prompts), args.batch_size):
      batch = gen_prompts[i:i + args.batch_size]
      # A short last batch is padded to the full size: one program.
      padded = batch + [batch[-1]] * (args.batch_size - len(batch))
      result = sampling.generate(config, params, padded,
                                 max_new_tokens=args.judge_tokens,
                                 stop_ids=stop_ids, pad_id=pad_id)
      texts += [tokenizer.decode(t, skip_special_tokens=True)
                for t in result.completions()[:len(batch)]]
    return texts

  def contrast():
    scores, _ = rubric.judge(config, params, chat, conversations, answers,
                             list(CRITERIA), micro_batch=args.batch_size,
                             readout="contrast")
    return np.concatenate([scores[name] for name in CRITERIA])

  methods = {"rubric": ours, "joint": joint, "contrast": contrast,
             "sampler": sampler_judge}
  if not args.skip_transformers:
    import torch
    hf_model = bench_common.transformers_embedded_model()

    def transformers_judge():
      texts = []
      for i in range(0, len(gen_prompts), args.batch_size):
        batch = gen_prompts[i:i + args.batch_size]
        ids, mask = sampling.pad_prompts(batch, max(len(p) for p in batch),
                                         pad_id)
        with torch.no_grad():
          result = hf_model.generate(
              input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=torch.tensor(mask, dtype=torch.long),
              do_sample=False, max_new_tokens=args.judge_tokens,
              eos_token_id=stop_ids, pad_token_id=pad_id)
        texts += tokenizer.batch_decode(result[:, ids.shape[1]:],
                                        skip_special_tokens=True)
      return texts

    methods["transformers"] = transformers_judge

  rows_out, results = {}, {}
  for name, fn in methods.items():
    start = time.perf_counter()
    fn()
    first_s = time.perf_counter() - start
    best_s, results[name] = bench_common.timed(fn, args.repeats)
    rows_out[name] = dict(first_s=first_s, best_s=best_s,
                          completions_per_s=n / best_s)
    print(f"{name}: first run {first_s:.1f} s, best {best_s:.2f} s",
          flush=True)

  scores = {name: np.asarray(results[name], np.float64)
            for name in ("rubric", "joint", "contrast")}
  for name in ("sampler", "transformers"):
    if name in results:
      scores[name] = parse_scores(results[name])
      rows_out[name]["examples"] = results[name][:3]
  for name, s in scores.items():
    parsed = ~np.isnan(s)
    rows_out[name]["parsed"] = float(parsed.mean())
    rows_out[name]["mean_score"] = (float(np.mean(s[parsed])) if parsed.any()
                                    else None)
    if name != "rubric" and parsed.sum() > 2 and np.std(s[parsed]) > 0:
      rows_out[name]["corr_with_rubric"] = float(
          np.corrcoef(s[parsed], scores["rubric"][parsed])[0, 1])

  print(f"\nSmolLM2-135M f32 judging its own answers: {args.prompts} held-out "
        f"prompts x {args.answers} answers = {n} completions x "
        f"{len(CRITERIA)} criteria, judge prompts "
        f"{gen_tokens / len(gen_prompts):.0f} tokens on average; batch "
        f"{args.batch_size}, generate-then-parse "
        f"with {args.judge_tokens} new tokens greedy; best of {args.repeats}; "
        f"{os.cpu_count()} CPU cores\n")
  print("| judge | completions/s | wall s | rubric speed-up | parsed | "
        "mean score | corr. with rubric | compile + first run s |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  base = rows_out["rubric"]["best_s"]
  for name, r in rows_out.items():
    corr = r.get("corr_with_rubric")
    mean = r["mean_score"]
    print(f"| {name} | {r['completions_per_s']:.2f} | {r['best_s']:.2f} | "
          f"{r['best_s'] / base:.2f}x | {r['parsed'] * 100:.0f}% | "
          f"{'-' if mean is None else f'{mean:.2f}'} | "
          f"{'-' if corr is None else f'{corr:.2f}'} | {r['first_s']:.1f} |")
  for name in ("transformers", "sampler"):
    if name in rows_out:
      print(f"{name} answers, first three: {rows_out[name]['examples']}")
  summary = {"benchmark": "judging", "completions": n,
             "criteria": len(CRITERIA), "batch_size": args.batch_size,
             "judge_tokens": args.judge_tokens, **rows_out}
  for name in ("transformers", "sampler"):
    if name in rows_out:
      summary[f"speedup_vs_{name}"] = rows_out[name]["best_s"] / base
      for readout in ("joint", "contrast"):
        summary[f"{readout}_speedup_vs_{name}"] = (
            rows_out[name]["best_s"] / rows_out[readout]["best_s"])
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
