"""One GRPO step: hmx_jax against TRL's `GRPOTrainer` (torch, CPU), same work.

  python benchmarks/grpo_step.py [--prompts 4] [--generations 4]
      [--new-tokens 64] [--beta 0.04] [--steps 3] [--remat none|full]

Both sides train the embedded SmolLM2-135M-Instruct in float32: ours loads
the GGUF (`models.load_model`), TRL loads the same weights exported to a
transformers directory (`models.export_hf`, into a temporary directory; no
hub). Each step samples `--generations` completions of each of the first
`--prompts` prompts of the embedded train set (the same prompts at every
step, rendered by the same chat template), exactly `--new-tokens` tokens
each (ours without stop tokens, TRL with `min_new_tokens`), at temperature
1; rewards them with the same synthetic reward (the fraction of completion
tokens equal to the id of "."; `reward.target_token_reward` on our side, the
same formula written out on TRL's); computes the reference log-probs
(`beta` > 0: a frozen copy of the initial policy on both sides) and takes
one AdamW update of the dapo loss (epsilon 0.2 / 0.28, group-scaled
advantages). `--remat none` (the default) recomputes no activations on
either side (`model.remat=none` here, TRL's `gradient_checkpointing` off);
`--remat full` recomputes each layer in the backward pass on both
(`model.remat=full`, TRL's default `gradient_checkpointing=True`).

Each side runs in its own subprocess, so neither's memory shows in the
other's. Each runs `--steps` + 1 steps; the first (compile, warm-up) is
reported apart, and of the others the fastest (as the other benchmarks keep
the best of their repeats; the machine may be shared), their mean in the
JSON. Seconds per step are split into:

  rollout    ours: `rollout.sample` (the weights packed for the CPU decode
             kernels, prefill, decode); TRL: `GRPOTrainer._generate`
             (chat template, `model.generate`, decoding to text).
  reference  the frozen reference model's log-probs of the completions.
  reward     ours: the `Rewarder` call; TRL: `_calculate_rewards`.
  update     ours: `learner.update_step` (forward, backward, AdamW), waited
             for; TRL: `compute_loss` + backward + gradient clipping +
             `optimizer.step` (the step's time outside `_prepare_inputs`).
  other      the rest of the step: ours decodes texts, computes advantages
             and places the batch; TRL pads, computes advantages, logs.

Peak memory is each process's `ru_maxrss` (loading included) and the
largest RSS sampled every 10 ms during the timed steps. The last line
printed is a JSON object with every number.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

BUCKETS = ("rollout", "reference", "reward", "update", "other")
# Both sides' AdamW: the repository's defaults (optim.*), constant rate.
LEARNING_RATE = 2e-6
ADAM_B2 = 0.99
REWARD_TOKEN = "."


class RssSampler:
  """Largest resident set size of this process while it is running."""

  def __init__(self, interval_s=0.01):
    import psutil
    self._process = psutil.Process()
    self._interval_s = interval_s
    self._stop = threading.Event()
    self.peak = 0
    self._thread = threading.Thread(target=self._poll, daemon=True)

  def _poll(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, self._process.memory_info().rss)
      time.sleep(self._interval_s)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, self._process.memory_info().rss)


class Buckets:
  """Seconds spent per named bucket, since the last `reset`."""

  def __init__(self):
    self.seconds = {}

  def reset(self):
    self.seconds = {}

  def add(self, name, seconds):
    self.seconds[name] = self.seconds.get(name, 0.0) + seconds

  def timed(self, name, fn, block=None):
    """`fn` wrapped so that its calls count towards `name`; `block` waits
    for the result (JAX dispatches asynchronously)."""
    def wrapper(*args, **kwargs):
      start = time.perf_counter()
      out = fn(*args, **kwargs)
      if block is not None:
        block(out)
      self.add(name, time.perf_counter() - start)
      return out
    return wrapper


def max_rss_bytes():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def summarize(steps):
  """Per-step dicts -> {"first": the first step, "best": the fastest of the
  others, "mean": the others averaged, "load": the 1-minute load average}."""
  rest = steps[1:] or steps
  return {"first": steps[0], "best": min(rest, key=lambda s: s["total"]),
          "mean": {k: sum(s[k] for s in rest) / len(rest) for k in steps[0]},
          "load": os.getloadavg()[0]}


def reward_target(tokenizer_encode):
  return tokenizer_encode(REWARD_TOKEN)[-1]


# ------------------------------------------------------------------- ours

def worker_ours(args):
  """Runs our GRPO steps; returns the result dict."""
  from hmx_jax import (base_config, learner, models, rollout, train)
  from hmx_jax.data import load_prompts

  prompts = load_prompts("train")[:args.prompts]
  c = base_config.get_config(models.EMBEDDED_MODEL)
  c.reward.kind = "target_token"
  c.sampling.max_new_tokens = args.new_tokens
  c.grpo.num_generations = args.generations
  c.grpo.beta = args.beta
  c.train.prompts_per_step = args.prompts
  c.train.num_steps = args.steps + 1
  c.optim.learning_rate = LEARNING_RATE
  c.optim.warmup_steps = 0
  c.optim.final_lr_fraction = 1.0
  c.model.remat = args.remat
  train.validate(c, prompts, None)
  start = time.perf_counter()
  # The trainer's own set-up and step (private: the loop around them writes
  # checkpoints and logs, which are no part of a step).
  run, state = train._setup(  # pylint: disable=protected-access
      c, None, prompts)
  load_s = time.perf_counter() - start
  c.reward.target_token = reward_target(
      lambda s: run.tokenizer.encode(s, add_special_tokens=False))
  # Every completion is exactly --new-tokens long, as on TRL's side.
  run.stop_ids = []

  import jax
  buckets = Buckets()
  rollout.sample = buckets.timed("rollout", rollout.sample)
  learner.sequence_logps = buckets.timed("reference", learner.sequence_logps,
                                         jax.block_until_ready)
  learner.update_step = buckets.timed("update", learner.update_step,
                                      jax.block_until_ready)
  run.rewarder = buckets.timed("reward", run.rewarder)

  steps = []
  with RssSampler() as rss:
    for step in range(args.steps + 1):
      if step == 1:
        rss.peak = 0  # The timed steps only.
      buckets.reset()
      start = time.perf_counter()
      state, metrics, _ = train._grpo_step(  # pylint: disable=protected-access
          run, state, step)
      jax.block_until_ready(state)
      total = time.perf_counter() - start
      times = {k: buckets.seconds.get(k, 0.0) for k in BUCKETS[:-1]}
      times["other"] = total - sum(times.values())
      times["total"] = total
      steps.append(times)
      print(f"ours step {step}: {total:.2f} s, loss {metrics['loss']:.4f}, "
            f"reward {metrics['reward']:.3f}", flush=True)
  lengths = [len(run.encoded[i]) for i in range(args.prompts)]
  return dict(summarize(steps), load_s=load_s, prompt_tokens=lengths,
              peak_rss=max_rss_bytes(), steps_peak_rss=rss.peak,
              target_token=int(c.reward.target_token))


# -------------------------------------------------------------------- TRL

def worker_trl(args):
  """Runs TRL's GRPO steps on the exported model; returns the result dict."""
  import datasets
  import numpy as np
  import torch
  import transformers
  import trl

  torch.set_num_threads(os.cpu_count())
  transformers.logging.set_verbosity_error()
  from hmx_jax.data import load_prompts  # Plain JSON: no JAX imported.
  prompts = load_prompts("train")[:args.prompts]
  tokenizer = transformers.AutoTokenizer.from_pretrained(args.hf_dir)
  target = reward_target(
      lambda s: tokenizer.encode(s, add_special_tokens=False))

  def target_token(completion_ids, **kwargs):
    del kwargs
    return [float(np.mean(np.asarray(ids) == target)) if len(ids) else 0.0
            for ids in completion_ids]

  buckets = Buckets()

  class TimedGRPOTrainer(trl.GRPOTrainer):
    """TRL's trainer with its step's pieces timed."""

    def _prepare_inputs(self, generation_batch):
      start = time.perf_counter()
      out = super()._prepare_inputs(generation_batch)
      buckets.add("prepare", time.perf_counter() - start)
      return out

    def _generate(self, prompts):
      start = time.perf_counter()
      out = super()._generate(prompts)
      buckets.add("rollout", time.perf_counter() - start)
      return out

    def _get_per_token_logps_and_entropies(self, model, *a, **k):
      start = time.perf_counter()
      out = super()._get_per_token_logps_and_entropies(model, *a, **k)
      if model is self.ref_model:
        buckets.add("reference", time.perf_counter() - start)
      return out

    def _calculate_rewards(self, *a, **k):
      start = time.perf_counter()
      out = super()._calculate_rewards(*a, **k)
      buckets.add("reward", time.perf_counter() - start)
      return out

  steps = []

  class StepTimer(transformers.TrainerCallback):

    def on_step_begin(self, *a, **k):
      buckets.reset()
      self.start = time.perf_counter()

    def on_step_end(self, *a, **k):
      total = time.perf_counter() - self.start
      s = buckets.seconds
      times = {k: s.get(k, 0.0) for k in ("rollout", "reference", "reward")}
      times["update"] = total - s["prepare"]
      times["other"] = total - sum(times.values())
      times["total"] = total
      steps.append(times)
      print(f"TRL step {len(steps) - 1}: {total:.2f} s", flush=True)
      if len(steps) == 1:
        rss.peak = 0  # The timed steps only.

  rows = [{"prompt": p.messages} for p in prompts] * (args.steps + 1)
  with tempfile.TemporaryDirectory() as out_dir:
    config = trl.GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, fp16=False, seed=0,
        per_device_train_batch_size=args.prompts * args.generations,
        gradient_accumulation_steps=1, num_generations=args.generations,
        max_completion_length=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens},
        temperature=1.0, top_p=1.0, top_k=0, beta=args.beta, epsilon=0.2,
        epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
        num_iterations=1, learning_rate=LEARNING_RATE, adam_beta2=ADAM_B2,
        weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant",
        warmup_steps=0, gradient_checkpointing=args.remat == "full",
        max_steps=args.steps + 1,
        shuffle_dataset=False, logging_steps=10**6, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        model_init_kwargs={"dtype": torch.float32})
    start = time.perf_counter()
    trainer = TimedGRPOTrainer(
        model=args.hf_dir, reward_funcs=target_token, args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer, callbacks=[StepTimer()])
    load_s = time.perf_counter() - start
    with RssSampler() as rss:
      trainer.train()
  lengths = [len(tokenizer.apply_chat_template(p.messages,
                                               add_generation_prompt=True,
                                               tokenize=True,
                                               return_dict=True)["input_ids"])
             for p in prompts]
  return dict(summarize(steps), load_s=load_s, prompt_tokens=lengths,
              peak_rss=max_rss_bytes(), steps_peak_rss=rss.peak,
              target_token=int(target))


# ------------------------------------------------------------------- main

def worker_env():
  """The environment of the subprocesses: offline, JAX on the CPU."""
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def run_worker(side, args, hf_dir=None):
  """Runs one side in a fresh Python process; returns its result dict."""
  command = [sys.executable, os.path.abspath(__file__), "--worker", side,
             "--prompts", str(args.prompts), "--generations",
             str(args.generations), "--new-tokens", str(args.new_tokens),
             "--beta", str(args.beta), "--steps", str(args.steps),
             "--remat", args.remat]
  if hf_dir:
    command += ["--hf-dir", hf_dir]
  proc = subprocess.run(command, env=worker_env(), stdout=subprocess.PIPE,
                        text=True, check=False)
  lines = proc.stdout.strip().splitlines()
  for line in lines[:-1]:
    print(line, flush=True)
  if proc.returncode:
    raise SystemExit(f"the {side} worker failed (exit {proc.returncode})")
  return json.loads(lines[-1])


def export_model(directory):
  """Writes the embedded model as a transformers checkpoint directory."""
  from hmx_jax import models
  config, params, tokenizer = models.load_model(models.EMBEDDED_MODEL)
  models.export_hf(config, params, tokenizer, directory)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--prompts", type=int, default=4)
  parser.add_argument("--generations", type=int, default=4)
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--beta", type=float, default=0.04)
  parser.add_argument("--steps", type=int, default=3,
                      help="timed steps, after one warm-up step")
  parser.add_argument("--remat", choices=("none", "full"), default="none",
                      help="recompute each layer's activations in the "
                      "backward pass, on both sides")
  parser.add_argument("--skip-trl", action="store_true")
  parser.add_argument("--worker", choices=("ours", "trl"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--hf-dir", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker:
    result = (worker_ours if args.worker == "ours" else worker_trl)(args)
    print(json.dumps(result))
    return

  results = {"ours": run_worker("ours", args)}
  if not args.skip_trl:
    with tempfile.TemporaryDirectory() as hf_dir:
      # In a subprocess too: its JAX memory stays out of TRL's process.
      subprocess.run([sys.executable, "-c",
                      "import sys; sys.path.insert(0, sys.argv[2]); "
                      "import grpo_step; grpo_step.export_model(sys.argv[1])",
                      hf_dir, os.path.dirname(os.path.abspath(__file__))],
                     env=worker_env(), check=True)
      results["trl"] = run_worker("trl", args, hf_dir)
    if results["trl"]["prompt_tokens"] != results["ours"]["prompt_tokens"]:
      print(f"WARNING: prompt lengths differ: ours "
            f"{results['ours']['prompt_tokens']}, TRL "
            f"{results['trl']['prompt_tokens']}", flush=True)

  ours, trl = results["ours"], results.get("trl")
  completions = args.prompts * args.generations
  print(f"\nSmolLM2-135M f32, {args.prompts} prompts x {args.generations} "
        f"completions x {args.new_tokens} tokens, beta {args.beta}, remat "
        f"{args.remat}; fastest of {args.steps} steps after a warm-up step; "
        f"{os.cpu_count()} CPU cores; 1-minute load average at the end: "
        f"hmx_jax {ours['load']:.1f}"
        + (f", TRL {trl['load']:.1f}" if trl else "") + "\n")
  print("| per step | hmx_jax | TRL | TRL / hmx_jax |")
  print("|---|---:|---:|---:|")
  nan = float("nan")
  for name in BUCKETS + ("total",):
    a = ours["best"][name]
    b = trl["best"][name] if trl else nan
    ratio = f"{b / a:.2f}x" if a > 1e-3 and trl else "-"
    print(f"| {name} s | {a:.2f} | {b:.2f} | {ratio} |")
  b = trl["first"]["total"] if trl else nan
  print(f"| first step s (compile, warm-up) | {ours['first']['total']:.2f} | "
        f"{b:.2f} | - |")
  gib = 2**30
  for key, label in (("peak_rss", "peak RSS, whole process"),
                     ("steps_peak_rss", "peak RSS, timed steps")):
    a = ours[key] / gib
    b = trl[key] / gib if trl else nan
    print(f"| {label} GiB | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
  tokens = completions * args.new_tokens
  print(f"\ncompletion tokens per second of step: hmx_jax "
        f"{tokens / ours['best']['total']:.0f}"
        + (f", TRL {tokens / trl['best']['total']:.0f}" if trl else ""))
  summary = {"benchmark": "grpo_step", "prompts": args.prompts,
             "generations": args.generations, "new_tokens": args.new_tokens,
             "beta": args.beta, "steps": args.steps, "remat": args.remat,
             **results}
  if trl:
    summary["speedup"] = trl["best"]["total"] / ours["best"]["total"]
    summary["speedup_of_means"] = (trl["mean"]["total"]
                                   / ours["mean"]["total"])
    summary["memory_ratio"] = ours["peak_rss"] / trl["peak_rss"]
    summary["steps_memory_ratio"] = (ours["steps_peak_rss"]
                                     / trl["steps_peak_rss"])
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
