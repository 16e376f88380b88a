"""The experiment end to end: `hmx-feel reproduce`.

Evaluates the base model, trains the human-like model (rubric self-reward
for expression) and the contrast model (`reward.direction=reverse`) with the
same config otherwise, evaluates both, and writes the comparison:

  DIR/config.json                  the resolved experiment config
  DIR/eval/<model>/results.json    per model: metrics with bootstrap CIs
  DIR/train/<model>/               training workdirs (checkpoints, metrics)
  DIR/report.md, DIR/report.json, DIR/figures/*.png

Every stage leaves its outputs complete or not at all, so a rerun skips the
finished ones (training resumes from its latest checkpoint).
"""

from __future__ import annotations

import copy
import json
import pathlib
import time

from hmx_jax import checkpoints, config_lib, report, sharding
from hmx_jax.data import load_prompts
from hmx_jax.errors import UserError
from hmx_jax.evals import common, compare, suite

TRAINED = {"human_like": "human_like", "contrast": "reverse"}
COMPARISONS = (("base", "human_like"), ("base", "contrast"),
               ("contrast", "human_like"))


def training_config(c, direction: str):
  """`c` with `reward.direction` set (a copy)."""
  trained = copy.deepcopy(c)
  with trained.unlocked():
    trained.reward.direction = direction
  return trained


def _validate(c) -> None:
  from hmx_jax import train
  suite.validate(c)
  suite.check_data(c)
  if c.reward.kind != "rubric":
    raise UserError(f"reward.kind={c.reward.kind!r}: reproduce trains with "
                    "the rubric reward")
  mesh = sharding.make_mesh(dict(c.mesh.shape)) if c.mesh.shape else None
  train.validate(c, load_prompts(c.data.train_prompts), mesh)


def _check_experiment(workdir: pathlib.Path, c) -> None:
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


def reproduce(c, workdir: str) -> dict:
  """Runs every unfinished stage; returns the report dict."""
  from hmx_jax import train
  _validate(c)
  root = pathlib.Path(workdir)
  _check_experiment(root, c)
  root.mkdir(parents=True, exist_ok=True)
  (root / "config.json").write_text(c.to_json(indent=2))
  start = time.time()

  base, judge = suite.load_base_and_judge(c)
  common.set_progress(bool(c.train.progress))

  def evaluate(name, model, description):
    out = root / "eval" / name
    if suite.is_done(out):
      print(f"== eval {name}: done", flush=True)
      return
    t = _stage(f"eval {name}")
    suite.run(c, model, judge, out, description=description)
    print(f"   eval {name}: {time.time() - t:.0f}s", flush=True)

  evaluate("base", base, f"base ({c.model.spec})")
  for name, direction in TRAINED.items():
    run_dir = root / "train" / name
    tc = training_config(c, direction)
    steps = checkpoints.available_steps(str(run_dir))
    if not steps or steps[-1] < tc.train.num_steps:
      t = _stage(f"train {name} (reward.direction={direction})")
      train.train(tc, str(run_dir))
      print(f"   train {name}: {time.time() - t:.0f}s", flush=True)
    else:
      print(f"== train {name}: done", flush=True)
    if not suite.is_done(root / "eval" / name):
      evaluate(name, suite.from_checkpoint(base, run_dir, tc.train.num_steps,
                                           name),
               f"{name}, reward.direction={direction}, step "
               f"{tc.train.num_steps}")

  _stage("report")
  result = write_report(c, root)
  print(f"done in {time.time() - start:.0f}s: {root / 'report.md'}",
        flush=True)
  return result


def write_report(c, root: pathlib.Path) -> dict:
  """The comparison of the evaluated models in `root`."""
  names = ("base",) + tuple(TRAINED)
  items = {n: suite.load_items(root / "eval" / n) for n in names}
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
  return report.write_report(str(root), models=models_,
                             comparisons=comparisons, training=training)
