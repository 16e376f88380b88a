"""Runs the evaluations on one model and writes its results.

`run(c, model, judge, out_dir)` evaluates `c.eval.evals` in turn. After each
evaluation its per-item arrays go to `out_dir/items/<eval>.npz`, so a rerun
after a kill skips the finished ones; at the end `out_dir/results.json`
holds every metric under a flat key with its bootstrap 95% CI, and
`out_dir/answers.jsonl` the generated answers of the expression evaluation.
Files are written to a temporary name and renamed, so none is ever partial.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time

import numpy as np

from hmx_jax.data import prompt_sets
from hmx_jax.errors import UserError
from hmx_jax.report import json_safe
from hmx_jax.evals import (bbq, common, compare, datasets, expression,
                           sycophancy, truthfulqa)

log = logging.getLogger(__name__)

EVALS = ("truthfulqa", "bbq", "sycophancy", "expression")
RESULTS = "results.json"


def data_dir(c) -> str:
  """`eval.data_dir`, else $HMX_DATA_DIR, else ../shared/data by the repo."""
  if c.eval.data_dir:
    return c.eval.data_dir
  if os.environ.get("HMX_DATA_DIR"):
    return os.environ["HMX_DATA_DIR"]
  return str(pathlib.Path(__file__).resolve().parents[3] / "shared" / "data")


def _limit(value) -> int | None:
  return int(value) if value else None


def validate(c) -> None:
  """Checks the `eval` section (names, limits) before anything runs."""
  e = c.eval
  unknown = [name for name in e.evals if name not in EVALS]
  if unknown:
    raise UserError(f"eval.evals names {unknown}: known evaluations are "
                    f"{list(EVALS)}")
  for key in ("truthfulqa.limit", "bbq.limit", "sycophancy.limit",
              "sycophancy.opinion_limit", "expression.limit"):
    section, name = key.split(".")
    if e[section][name] < 0:
      raise UserError(f"eval.{key}={e[section][name]} must be >= 0 "
                      "(0: every item)")
  if e.batch_size < 1:
    raise UserError(f"eval.batch_size={e.batch_size} must be >= 1")
  if "expression" in e.evals:
    from hmx_jax.rubric_text import get_criterion
    for name in e.expression.criteria:
      get_criterion(name)


def check_data(c) -> None:
  """Reads every dataset the evaluations will use (within their limits).

  A missing dataset or a malformed row fails here, before any model work,
  naming the dataset and where to get it, or the row's file:line.
  """
  e, root = c.eval, data_dir(c)
  for name in e.evals:
    if name == "truthfulqa":
      datasets.load_truthfulqa_mc(root, limit=_limit(e.truthfulqa.limit))
    elif name == "bbq":
      datasets.load_bbq(root, categories=list(e.bbq.categories) or None,
                        limit=_limit(e.bbq.limit))
    elif name == "sycophancy":
      sycophancy.questions(root, _limit(e.sycophancy.limit))
      datasets.load_political_sycophancy(
          root, limit=_limit(e.sycophancy.opinion_limit))
    elif name == "expression":
      prompt_sets.load_prompts(e.expression.prompts)


def load_base_and_judge(c) -> tuple[common.EvalModel, common.EvalModel]:
  """The base model (`model.spec`) and the expression evaluation's judge.

  `eval.expression.judge` is "base" (the base model, frozen) or a model
  spec of its own.
  """
  from hmx_jax import models
  base = common.EvalModel(*models.load_model(c.model.spec,
                                             dtype=c.model.dtype),
                          name="base")
  if c.eval.expression.judge in ("base", ""):
    return base, base
  return base, common.EvalModel(*models.load_model(
      c.eval.expression.judge, dtype=c.model.dtype), name="judge")


def from_checkpoint(base: common.EvalModel, workdir, step: int, name: str
                    ) -> common.EvalModel:
  """`base` with the params of a training checkpoint."""
  import jax
  from hmx_jax import checkpoints
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          base.params)
  params = checkpoints.restore_params(str(workdir), step, abstract)
  return common.EvalModel(base.config, params, base.tokenizer, name=name)


def metric_defs(c, items: dict[str, np.ndarray]) -> tuple[compare.Metric, ...]:
  """The metrics of the evaluations whose arrays are in `items`."""
  out = []
  if "truthfulqa/mc1" in items:
    out += truthfulqa.METRICS
  if "bbq/pred" in items:
    out += bbq.metric_defs(bbq.categories_in(items))
  if "sycophancy/matched" in items:
    out += sycophancy.METRICS
  if "expression/judge" in items:
    out += expression.metric_defs(tuple(c.eval.expression.criteria))
  return tuple(out)


def _evaluate_one(name, c, model, judge):
  e, root = c.eval, data_dir(c)
  if name == "truthfulqa":
    return truthfulqa.evaluate(model, root, limit=_limit(e.truthfulqa.limit),
                               batch_size=e.batch_size), None
  if name == "bbq":
    return bbq.evaluate(model, root, limit=_limit(e.bbq.limit),
                        categories=list(e.bbq.categories) or None,
                        batch_size=e.batch_size), None
  if name == "sycophancy":
    return sycophancy.evaluate(
        model, root, limit=_limit(e.sycophancy.limit),
        opinion_limit=_limit(e.sycophancy.opinion_limit),
        batch_size=e.batch_size), None
  x = e.expression
  return expression.evaluate(
      model, judge, prompts=x.prompts, limit=_limit(x.limit),
      criteria=tuple(x.criteria), max_new_tokens=x.max_new_tokens,
      temperature=x.temperature, batch_size=e.batch_size, seed=e.seed)


def _atomic_write(path: pathlib.Path, write) -> None:
  tmp = path.with_name(path.name + ".tmp")
  write(tmp)
  os.replace(tmp, path)


def _save_items(path: pathlib.Path, items: dict[str, np.ndarray]) -> None:
  # npz keys cannot hold "/": store them with "|".
  with open(path, "wb") as f:
    np.savez(f, **{k.replace("/", "|"): v for k, v in items.items()})


def load_items(out_dir) -> dict[str, np.ndarray]:
  """Every per-item array saved in `out_dir/items/`."""
  items = {}
  for path in sorted(pathlib.Path(out_dir, "items").glob("*.npz")):
    with np.load(path, allow_pickle=False) as f:
      items.update({k.replace("|", "/"): f[k] for k in f.files})
  return items


def is_done(out_dir) -> bool:
  return pathlib.Path(out_dir, RESULTS).exists()


def run(c, model: common.EvalModel, judge: common.EvalModel | None, out_dir,
        *, description: str = "") -> dict:
  """Evaluates `model`, writing `out_dir` (see the module docstring).

  Args:
    c: the experiment config (its `eval` section).
    model: the model to evaluate.
    judge: the fixed judge of the expression evaluation.
    out_dir: where results go; evaluations already saved there are skipped.
    description: what the model is, for the results file.

  Returns:
    The results dict written to results.json.
  """
  validate(c)
  check_data(c)
  out = pathlib.Path(out_dir)
  (out / "items").mkdir(parents=True, exist_ok=True)
  for name in c.eval.evals:
    path = out / "items" / f"{name}.npz"
    if path.exists():
      log.info("%s: %s already evaluated", out_dir, name)
      continue
    start = time.time()
    items, records = _evaluate_one(name, c, model, judge)
    if records is not None:
      _atomic_write(out / "answers.jsonl", lambda p: p.write_text(
          "".join(json.dumps(r) + "\n" for r in records)))
    _atomic_write(path, lambda p: _save_items(p, items))
    print(f"{model.name}: {name} done in {time.time() - start:.0f}s",
          flush=True)
  items = load_items(out)
  metrics = compare.summarize(metric_defs(c, items), items,
                              n_resamples=c.eval.n_resamples, seed=c.eval.seed)
  results = {"model": model.name, "description": description,
             "metrics": metrics}
  _atomic_write(out / RESULTS, lambda p: p.write_text(
      json.dumps(json_safe(results), indent=2) + "\n"))
  return results


def read_results(out_dir) -> dict:
  """results.json of a finished evaluation, NaN restored for nulls."""
  with open(pathlib.Path(out_dir, RESULTS)) as f:
    results = json.load(f)
  for m in results["metrics"].values():
    for k, v in m.items():
      if v is None:
        m[k] = float("nan")
  return results
