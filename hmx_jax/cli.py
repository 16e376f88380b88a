"""The `hmx-feel` command line.

  hmx-feel chat [--model SPEC | --workdir DIR [--step N]] [--prompt TEXT]
  hmx-feel train --config configs/<model>.py:<preset> --workdir DIR
      [--config.a.b=value ...]
  hmx-feel eval --config ... --workdir DIR [--step N | --base]
  hmx-feel reproduce --config ... --workdir DIR
  hmx-feel export --workdir DIR [--step N] --out OUT [--dtype bfloat16]
  hmx-feel prepare-data [--data-dir DIR] [--datasets a,b] [--offline]
  hmx-feel aot --config configs/<model>.py:<tpu preset> [--config.a.b=value]
  hmx-feel judge-check [--model SPEC] [--json OUT]

Errors a user can fix print one line and exit with 2; `--debug` shows the
traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from hmx_jax.errors import UserError

# transformers serves us tokenizers and configs only; its notice that torch
# is absent (the default install has none) is not news to a user.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

EXIT_USAGE = 2


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--max-new-tokens", type=int, default=256)
  p.add_argument("--temperature", type=float, default=0.0,
                 help="0 is greedy decoding (default)")
  p.add_argument("--top-k", type=int, default=0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
  """Flags of a run over several processes (`hmx_jax.distributed`)."""
  g = p.add_argument_group(
      "several processes", "all three, or none (a Cloud TPU preset finds "
      "its hosts itself)")
  g.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                 help="process 0's coordinator, e.g. localhost:1234")
  g.add_argument("--num-processes", type=int, default=None)
  g.add_argument("--process-id", type=int, default=None)


def _init_distributed(args, config) -> None:
  from hmx_jax import distributed
  distributed.initialize(
      args.coordinator_address, args.num_processes, args.process_id,
      tpu_preset=bool(config.get("tpu", {}).get("accelerator_type")))


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="hmx-feel",
      description="HMX-feel in JAX: GRPO with rubric self-reward.")
  parser.add_argument("--debug", action="store_true",
                      help="show tracebacks of errors")
  sub = parser.add_subparsers(dest="command", required=True)

  chat = sub.add_parser(
      "chat", help="talk to a model",
      description="Talk to a model: interactive (multi-turn, streamed) or "
      "one-shot with --prompt.")
  source = chat.add_mutually_exclusive_group()
  source.add_argument(
      "--model", default=None,
      help="preset name, .gguf file, HF directory or hub id "
      "(default: the embedded smollm2-135m-instruct)")
  source.add_argument("--workdir", default=None,
                      help="a training workdir: chat with its checkpoint")
  chat.add_argument("--step", type=int, default=None,
                    help="checkpoint step in --workdir (default: latest)")
  chat.add_argument("--prompt", default=None,
                    help="one message; print the answer and exit")
  chat.add_argument("--system", default=None, help="optional system message")
  chat.add_argument("--dtype", default="float32",
                    choices=("float32", "bfloat16"))
  _add_sampling_args(chat)
  chat.set_defaults(run=run_chat)

  train = sub.add_parser(
      "train", help="GRPO training with rubric self-reward",
      description="GRPO training. Overrides: --config.a.b=value.")
  train.add_argument("--config", required=True,
                     help="configs/<model>.py:<preset>")
  train.add_argument("--workdir", required=True,
                     help="checkpoints, metrics and the resolved config; "
                     "an existing workdir is resumed")
  _add_distributed_args(train)
  train.set_defaults(run=run_train)

  ev = sub.add_parser(
      "eval", help="evaluate a checkpoint or the base model",
      description="Runs the evaluations (eval.* in the config) and writes "
      "DIR/eval/<name>/results.json. Overrides: --config.a.b=value.")
  ev.add_argument("--config", required=True,
                  help="configs/<model>.py:<preset>")
  ev.add_argument("--workdir", required=True,
                  help="a training workdir: its checkpoints are evaluated, "
                  "with the model.spec of its config.json")
  which = ev.add_mutually_exclusive_group()
  which.add_argument("--step", type=int, default=None,
                     help="checkpoint step (default: latest)")
  which.add_argument("--base", action="store_true",
                     help="evaluate the base model (model.spec) instead")
  _add_distributed_args(ev)
  ev.set_defaults(run=run_eval)

  rep = sub.add_parser(
      "reproduce", help="the whole experiment: base, human-like, contrast",
      description="Evaluates the base model, trains and evaluates the "
      "human-like and contrast models, writes DIR/report.md. Reruns skip "
      "finished stages. Overrides: --config.a.b=value.")
  rep.add_argument("--config", required=True,
                   help="configs/<model>.py:<preset>")
  rep.add_argument("--workdir", required=True, help="experiment directory")
  _add_distributed_args(rep)
  rep.set_defaults(run=run_reproduce)
  _add_export_parser(sub)
  _add_prepare_data_parser(sub)
  _add_aot_parser(sub)
  _add_judge_check_parser(sub)
  return parser


def _add_prepare_data_parser(sub) -> None:
  prep = sub.add_parser(
      "prepare-data", help="prepare the evaluation and prompt sets (TFDS)",
      description="Prepares the TFDS datasets once (array_record): from "
      "the upstream files in DATA_DIR, or downloaded from their pinned URLs "
      "when missing. Later runs only read them.")
  prep.add_argument("--data-dir", default="",
                    help="eval.data_dir: the upstream files (default: "
                    "$HMX_DATA_DIR, else ../shared/data beside the repo)")
  prep.add_argument("--datasets", default="truthfulqa,bbq,"
                    "political_sycophancy,prompts",
                    help="comma-separated (default: all)")
  prep.add_argument("--offline", action="store_true",
                    help="never download; a missing file is an error")
  prep.set_defaults(run=run_prepare_data)


def run_prepare_data(args) -> int:
  import ml_collections
  from hmx_jax.data import tfds as data_tfds
  from hmx_jax.evals import suite
  data_dir = suite.data_dir(ml_collections.ConfigDict(
      {"eval": {"data_dir": args.data_dir}}))
  for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
    start = time.perf_counter()
    prepared = data_tfds.prepare(name, data_dir,
                                 download=False if args.offline else None)
    info = prepared.builder.info
    rows = sum(s.num_examples for s in info.splits.values())
    done = ("already prepared" if prepared.prepare_s is None
            else f"prepared in {prepared.prepare_s:.1f}s")
    print(f"{name}: {rows} rows, {done} ({time.perf_counter() - start:.1f}s"
          f" in all): {prepared.builder.data_dir}")
  return 0


def _add_aot_parser(sub) -> None:
  aot = sub.add_parser(
      "aot", help="compile a TPU preset's programs here and size them",
      description="Compiles the GRPO update, the sampler's prefill and "
      "decode step and the judge for the preset's TPU slice (needs libtpu: "
      "the tpu extra; no TPU, no weights) and prints per-chip memory against "
      "HBM, FLOPs and a roofline step time. Exit 0: everything fits; 1: "
      "something does not. Overrides: --config.a.b=value.")
  aot.add_argument("--config", required=True,
                   help="configs/<model>.py:<tpu preset>, e.g. "
                   "configs/qwen3_8b.py:v5p-64")
  aot.add_argument("--programs", default="",
                   help="compile only these, comma-separated, of update, "
                   "prefill, decode, judge (default: all)")
  aot.set_defaults(run=run_aot)


def run_aot(args) -> int:
  from hmx_jax import aot, config_lib
  config = config_lib.load_config(args.config)
  config_lib.apply_overrides(config, args.overrides)
  only = tuple(p for p in args.programs.split(",") if p)
  return aot.run(config, args.config, only)


def _add_judge_check_parser(sub) -> None:
  check = sub.add_parser(
      "judge-check", help="how well a rubric judge tells expression apart",
      description="Scores the embedded labelled pairs (an answer that "
      "expresses feelings, intentions or self-awareness, and one with the "
      "same content that does not) with the model as rubric judge, and "
      "prints per criterion the AUROC and the fraction of pairs it orders "
      "right.")
  check.add_argument(
      "--model", default=None,
      help="preset name, .gguf file, HF directory or hub id "
      "(default: the embedded smollm2-135m-instruct)")
  check.add_argument("--json", default=None, metavar="OUT",
                     help="also write the results (with per-pair scores) "
                     "to this JSON file")
  check.add_argument("--dtype", default="float32",
                     choices=("float32", "bfloat16"))
  check.add_argument("--batch-size", type=int, default=8,
                     help="judge prompts per forward pass")
  check.add_argument("--readout", default="rubric",
                     choices=("rubric", "joint", "contrast"),
                     help="how the judge's scores are read (hmx_jax.rubric)")
  check.set_defaults(run=run_judge_check)


def run_judge_check(args) -> int:
  import json
  from hmx_jax import models
  from hmx_jax.evals import common, judge_check
  if args.batch_size < 1:
    raise UserError(f"--batch-size {args.batch_size} must be at least 1")
  spec = args.model or models.EMBEDDED_MODEL
  print("loading model ...", file=sys.stderr, flush=True)
  config, params, tokenizer = models.load_model(spec, dtype=args.dtype)
  if tokenizer is None:
    raise UserError("the model has no tokenizer files; the judge needs one")
  judge = common.EvalModel(config, params, tokenizer, name=spec)
  results = judge_check.evaluate(judge, batch_size=args.batch_size,
                                 readout=args.readout)
  print(f"{'criterion':16s} {'pairs':>5s} {'auroc':>6s} {'pair_acc':>8s} "
        f"{'expressive':>10s} {'flat':>6s}   calibrated: "
        f"{'slope':>6s} {'intercept':>9s} {'expressive':>10s} {'flat':>6s}")
  for name in judge_check.EXPRESSION_CRITERIA:
    r = results[name]
    print(f"{name:16s} {r['n_pairs']:5d} {r['auroc']:6.3f} "
          f"{r['pair_accuracy']:8.3f} {r['mean_expressive']:10.3f} "
          f"{r['mean_flat']:6.3f}               "
          f"{r['calibration']['slope']:6.2f} "
          f"{r['calibration']['intercept']:9.2f} "
          f"{r['calibrated_expressive']:10.3f} {r['calibrated_flat']:6.3f}")
  print(f"{'mean':16s} {'':5s} {results['mean_auroc']:6.3f}")
  if args.json:
    try:
      with open(args.json, "w", encoding="utf-8") as f:
        json.dump({"model": spec, "readout": args.readout, **results}, f,
                  indent=2)
        f.write("\n")
    except OSError as e:
      raise UserError(f"--json {args.json}: cannot write: {e}") from None
    print(f"wrote {args.json}")
  return 0


def _cpu_unless_tpu() -> None:
  """JAX on the CPU where libtpu is installed but no TPU is attached: left
  alone, JAX would load libtpu (and take its machine-wide lock) to find
  none."""
  import importlib.util
  if "JAX_PLATFORMS" in os.environ or not importlib.util.find_spec("libtpu"):
    return
  try:
    from jax._src import hardware_utils
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    gpu = hardware_utils.has_visible_nvidia_gpu()
  except (ImportError, AttributeError, OSError):
    return
  if not chips and not gpu:
    os.environ["JAX_PLATFORMS"] = "cpu"  # For subprocesses.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # jax, imported above, read the environment already.
    import jax
    jax.config.update("jax_platforms", "cpu")


def _add_export_parser(sub) -> None:
  export = sub.add_parser(
      "export", help="a training checkpoint as a Hugging Face directory",
      description="Writes OUT: config.json, safetensors (sharded with an "
      "index above --max-shard-size), tokenizer and generation config, "
      "loadable by transformers' AutoModelForCausalLM.from_pretrained.")
  export.add_argument("--workdir", required=True, help="a training workdir")
  export.add_argument("--step", type=int, default=None,
                      help="checkpoint step (default: latest)")
  export.add_argument("--out", required=True,
                      help="directory to create (must not exist, or be empty)")
  export.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"),
                      help="weights as trained (float32) or rounded to "
                      "bfloat16")
  export.add_argument("--max-shard-size", default="5GB",
                      help="largest safetensors file, as transformers spells "
                      "it: 5GB, 500MB, 2GiB (default 5GB)")
  _add_distributed_args(export)
  export.set_defaults(run=run_export)


def run_export(args) -> int:
  from hmx_jax import checkpoints
  from hmx_jax.models import export
  try:  # Whether the run was a TPU preset, whose hosts JAX finds itself.
    run_config = checkpoints.read_run_config(args.workdir)
  except UserError:
    run_config = {}  # export_checkpoint names what is missing.
  _init_distributed(args, run_config)
  result = export.export_checkpoint(
      args.workdir, args.out, step=args.step, dtype=args.dtype,
      max_shard_size=args.max_shard_size)
  if result["files"]:
    print(f"wrote {result['out']} (step {result['step']}, {result['dtype']}, "
          f"{len(result['files'])} safetensors file(s))")
  return 0


def _config(args):
  from hmx_jax import config_lib
  config = config_lib.load_config(args.config)
  config_lib.apply_overrides(config, args.overrides)
  config.lock()
  _init_distributed(args, config)
  return config


def run_eval(args) -> int:
  from hmx_jax import checkpoints
  from hmx_jax.evals import common, suite
  c = _config(args)
  suite.validate(c)
  suite.check_data(c)
  common.set_progress(bool(c.train.progress))
  spec = _workdir_spec(args.workdir, c, required=not args.base)
  step = None
  if not args.base:  # Checked before the (slow) model load.
    step = checkpoints.resolve_step(args.workdir, args.step)
  base, judge = suite.load_base_and_judge(c, spec)
  if args.base:
    model, name, description = base, "base", f"base ({spec})"
  else:
    name = f"step_{step}"
    model = suite.from_checkpoint(base, args.workdir, step, name)
    description = f"{args.workdir} step {step}"
  out = os.path.join(args.workdir, "eval", name)
  results = suite.run(c, model, judge, out, spec=spec, step=step,
                      description=description)
  from hmx_jax import distributed
  if not distributed.is_primary():
    return 0
  for key, m in results["metrics"].items():
    print(f"{key:40s} {m['value']:.4f} [{m['ci_low']:.4f}, "
          f"{m['ci_high']:.4f}]")
  print(f"wrote {os.path.join(out, suite.RESULTS)}")
  return 0


def _workdir_spec(workdir: str, c, required: bool) -> str:
  """The model spec of a training workdir (its config.json), which gives
  the architecture its checkpoints fit; `model.spec` when the workdir has
  no config.json and none is `required`."""
  from hmx_jax import checkpoints
  if not required and not os.path.exists(os.path.join(workdir,
                                                      "config.json")):
    return c.model.spec
  spec = checkpoints.run_spec(workdir)
  if spec != c.model.spec:
    print(f"model.spec {spec!r} from {os.path.join(workdir, 'config.json')} "
          f"(not the --config's {c.model.spec!r})", flush=True)
  return spec


def run_reproduce(args) -> int:
  from hmx_jax import reproduce
  reproduce.reproduce(_config(args), args.workdir)
  return 0


def run_train(args) -> int:
  config = _config(args)
  from hmx_jax import train
  last = train.train(config, args.workdir)
  print(f"done: step {last.get('step')} reward {last.get('reward', 0):.3f} "
        f"(workdir {args.workdir})")
  return 0


def _load_for_chat(args):
  from hmx_jax import models
  if args.workdir is not None:
    from hmx_jax import checkpoints
    return checkpoints.load_for_inference(args.workdir, args.step,
                                          dtype=args.dtype)
  if args.step is not None:
    raise UserError("--step needs --workdir")
  spec = args.model or models.EMBEDDED_MODEL
  return models.load_model(spec, dtype=args.dtype)


def run_chat(args) -> int:
  from hmx_jax import chat as chat_lib
  if not 0.0 < args.top_p <= 1.0:
    raise UserError(f"--top-p {args.top_p} must be in (0, 1]")
  if args.prompt is not None and not args.prompt.strip():
    raise UserError("--prompt is empty")
  start = time.time()
  print("loading model ...", file=sys.stderr, flush=True)
  config, params, tokenizer = _load_for_chat(args)
  if tokenizer is None:
    raise UserError("the model has no tokenizer files; chat needs one")
  print(f"loaded {config.family} model ({time.time() - start:.1f}s)",
        file=sys.stderr, flush=True)
  session = chat_lib.ChatSession(config, params, tokenizer,
                                 system=args.system,
                                 max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p,
                                 seed=args.seed)
  if args.prompt is not None:
    session.send(args.prompt, stream=sys.stdout)
    return 0
  print("type a message; /reset clears the history, /quit or Ctrl-D exits",
        file=sys.stderr)
  while True:
    try:
      text = input("you> ")
    except (EOFError, KeyboardInterrupt):
      print(file=sys.stderr)
      return 0
    if text.strip() in ("/quit", "/exit"):
      return 0
    if text.strip() == "/reset":
      session.reset()
      continue
    if not text.strip():
      continue
    sys.stdout.write("model> ")
    session.send(text, stream=sys.stdout)


def main(argv=None) -> int:
  parser = build_parser()
  args, unknown = parser.parse_known_args(argv)
  args.overrides = unknown
  if unknown and args.command not in ("train", "eval", "reproduce", "aot"):
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING,
                      format="%(levelname)s %(name)s: %(message)s")
  if not args.debug:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _cpu_unless_tpu()
  try:
    return args.run(args)
  except UserError as e:
    if args.debug:
      raise
    print(f"hmx-feel: error: {e}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
  sys.exit(main())
