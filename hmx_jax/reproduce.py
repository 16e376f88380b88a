"""The experiment end to end: `hmx-feel reproduce`.

Evaluates the base model, trains three models with the same config
otherwise, evaluates them, and writes the comparison:

  human_like     GRPO, rubric self-reward for expression
  contrast       GRPO, the reward reversed (`reward.direction=reverse`)
  contrast_pref  the contrast model made the second way: the contrastive
                 objective (`objective=contrastive`, preference pairs of the
                 best and worst self-judged answers), reward reversed

Outputs:

  DIR/config.json                  the resolved experiment config
  DIR/eval/<model>/results.json    per model: metrics with bootstrap CIs
  DIR/eval/judge_check.json        how well the expression judge tells
                                   labelled expressive from flat answers
  DIR/train/<model>/               training workdirs (checkpoints, metrics)
  DIR/report.md, DIR/report.json, DIR/figures/*.png

Every stage leaves its outputs complete or not at all, so a rerun skips the
finished ones (training resumes from its latest checkpoint). SIGTERM (a
preempted VM) stops any stage cleanly: training saves a checkpoint first,
an evaluation or the report keeps only what it had finished; the command
exits 0 and a rerun carries on from there.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import time

from etils import epath

from hmx_jax import checkpoints, config_lib, distributed, report, sharding
from hmx_jax.data import load_prompts
from hmx_jax.errors import UserError
from hmx_jax.evals import common, compare, suite

# Each trained model: the config keys it overrides.
TRAINED = {
    "human_like": {"reward.direction": "human_like", "objective": "grpo"},
    "contrast": {"reward.direction": "reverse", "objective": "grpo"},
    "contrast_pref": {"reward.direction": "reverse",
                      "objective": "contrastive"},
}
COMPARISONS = (("base", "human_like"), ("base", "contrast"),
               ("base", "contrast_pref"), ("contrast", "human_like"))
RERUN = "rerun the same command to resume"


class Preempted(BaseException):
  """SIGTERM arrived outside training; raised to unwind the current stage.

  A BaseException, so that no `except Exception` on the way swallows it.
  """


@contextlib.contextmanager
def _sigterm_stops():
  """Turns SIGTERM into `Preempted` (training installs its own handler)."""
  def handle(signum, frame):
    del signum, frame
    raise Preempted()
  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def training_config(c, overrides: dict):
  """`c` with the dotted keys of `overrides` set (a copy)."""
  trained = copy.deepcopy(c)
  with trained.unlocked():
    for key, value in overrides.items():
      *parents, leaf = key.split(".")
      node = trained
      for parent in parents:
        node = node[parent]
      node[leaf] = value
  return trained


def _settings(overrides: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in overrides.items())


def _validate(c) -> None:
  from hmx_jax import train
  suite.validate(c)
  suite.check_data(c)
  if c.reward.kind != "rubric":
    raise UserError(f"reward.kind={c.reward.kind!r}: reproduce trains with "
                    "the rubric reward")
  if c.objective != "grpo":
    raise UserError(f"objective={c.objective!r}: reproduce sets it per "
                    f"model ({', '.join(TRAINED)}); leave it at grpo")
  mesh = sharding.make_mesh(dict(c.mesh.shape)) if c.mesh.shape else None
  prompts = load_prompts(c.data.train_prompts)
  for overrides in TRAINED.values():
    train.validate(training_config(c, overrides), prompts, mesh)


def _check_experiment(workdir: epath.Path, c) -> None:
  path = workdir / "config.json"
  if not path.exists():
    return
  differ = config_lib.differing_keys(json.loads(path.read_text()), c)
  if differ:
    raise UserError(f"{workdir} holds an experiment with a different config "
                    f"({', '.join(k for k, _, _ in differ[:6])}); use a new "
                    "--workdir")


def _stage(name: str):
  print(f"== {name}", flush=True)
  return time.time()


def reproduce(c, workdir: str) -> dict | None:
  """Runs every unfinished stage.

  Returns:
    The report dict, or None when SIGTERM stopped a stage (the outputs of
    the finished stages are kept; a rerun resumes).
  """
  _validate(c)
  root = checkpoints.workdir_path(workdir)  # A gs:// URL too.
  _check_experiment(root, c)
  if distributed.is_primary():
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(c.to_json(indent=2))
  stage = ["start"]
  with _sigterm_stops():
    try:
      return _run_stages(c, root, stage)
    except Preempted:
      print(f"SIGTERM during {stage[0]}: stopped, no file left "
            f"half-written; {RERUN}", flush=True)
      return None


def _run_stages(c, root: epath.Path, stage: list) -> dict | None:
  from hmx_jax import train
  start = time.time()
  common.set_progress(bool(c.train.progress))
  # The base model and the expression judge (the same arrays when the judge
  # is the base), loaded when an evaluation needs them and dropped before
  # each training, which holds the initial weights itself (its KL
  # reference and `initial` judge): one copy of the base weights beside
  # the policy at any time.
  loaded = {}

  def load_base_and_judge():
    if not loaded:
      stage[0] = "loading the base model"
      loaded["base"], loaded["judge"] = suite.load_base_and_judge(c)

  def evaluate(name, model_of_base, step, description):
    out = root / "eval" / name
    if suite.is_done(c, out):
      print(f"== eval {name}: done", flush=True)
      return
    load_base_and_judge()
    stage[0] = f"loading the {name} model"
    model = model_of_base(loaded["base"])
    stage[0] = f"eval {name}"
    t = _stage(stage[0])
    suite.run(c, model, loaded["judge"], out, spec=c.model.spec, step=step,
              description=description)
    print(f"   eval {name}: {time.time() - t:.0f}s", flush=True)

  if "expression" in c.eval.evals:
    # First: with `eval.expression.calibrate` every expression evaluation
    # reads its judge scores through the check's calibration.
    path = root / "eval" / suite.JUDGE_CHECK
    if suite.saved_judge_check(c, c.model.spec, path) is not None:
      print("== judge check: done", flush=True)
    else:
      load_base_and_judge()
      stage[0] = "judge check"
      t = _stage(stage[0])
      suite.judge_check(c, loaded["judge"], path, c.model.spec)
      print(f"   judge check: {time.time() - t:.0f}s", flush=True)
  evaluate("base", lambda base: base, None, f"base ({c.model.spec})")
  for name, overrides in TRAINED.items():
    run_dir = root / "train" / name
    tc = training_config(c, overrides)
    step = tc.train.num_steps
    if step not in checkpoints.available_steps(str(run_dir)):
      loaded.clear()
      stage[0] = f"train {name}"
      t = _stage(f"train {name} ({_settings(overrides)})")
      if train.train(tc, str(run_dir)).get("preempted"):
        print(f"SIGTERM: training {name} stopped after saving a checkpoint; "
              f"{RERUN}", flush=True)
        return None
      print(f"   train {name}: {time.time() - t:.0f}s", flush=True)
    else:
      print(f"== train {name}: done", flush=True)
    evaluate(name, lambda base: suite.from_checkpoint(base, run_dir, step,
                                                      name),
             step, describe(name, overrides, step, run_dir))

  stage[0] = "report"
  _stage(stage[0])
  if not distributed.is_primary():
    return {}
  result = write_report(c, root)
  print(f"done in {time.time() - start:.0f}s: {root / 'report.md'}",
        flush=True)
  return result


def describe(name: str, overrides: dict, step: int, run_dir) -> str:
  """A trained model's description; it names the step whose update the
  checkpoint holds when the last steps were not finite (and skipped)."""
  text = f"{name}, {_settings(overrides)}, step {step}"
  rows = report.read_training_log(str(checkpoints.workdir_path(run_dir) /
                                      "metrics.jsonl"))
  finite = [r["step"] for r in rows
            if r["step"] <= step and not r.get("non_finite_skipped")]
  last_finite = finite[-1] if finite else 0
  if last_finite != step:
    skipped = (f"step {step} was" if last_finite + 1 == step
               else f"steps {last_finite + 1}-{step} were")
    text += (f" ({skipped} not finite and skipped: the params of step "
             f"{last_finite})")
  return text


def write_report(c, root: epath.Path) -> dict:
  """The comparison of the evaluated models in `root`."""
  names = ("base",) + tuple(TRAINED)
  items = {n: suite.load_items(root / "eval" / n, c.eval.evals)
           for n in names}
  results = {n: suite.read_results(root / "eval" / n) for n in names}
  models_ = {n: {"results": r["metrics"], "description": r["description"]}
             for n, r in results.items()}
  comparisons = []
  for a, b in COMPARISONS:
    metrics = suite.metric_defs(c, items[a])
    comparisons.append((a, b, compare.compare(
        metrics, items[a], items[b], n_resamples=c.eval.n_resamples,
        seed=c.eval.seed)))
  training = {n: str(root / "train" / n / "metrics.jsonl") for n in TRAINED}
  answers = {n: suite.read_answers(root / "eval" / n) for n in names}
  check = root / "eval" / suite.JUDGE_CHECK
  return report.write_report(
      str(root), models=models_, comparisons=comparisons, training=training,
      answers={n: rows for n, rows in answers.items() if rows},
      judge_check=json.loads(check.read_text()) if check.exists() else None)
