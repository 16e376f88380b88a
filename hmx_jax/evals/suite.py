"""Runs the evaluations on one model and writes its results.

`run(c, model, judge, out_dir, spec=..., step=...)` evaluates
`c.eval.evals` in turn. Each evaluation's per-item arrays go to
`out_dir/items/<eval>.npz` together with what produced them (`eval_key`):
the model (spec, checkpoint step, a fingerprint of its params, compute
dtype, chat options), the evaluation's config section and the checksums of
the data files it read. A rerun reuses a saved evaluation only when all of
that matches, and otherwise says what changed and recomputes it; so a
rerun after a kill skips the finished evaluations, and a changed limit or
checkpoint is never answered with stale items. At the end
`out_dir/results.json` holds every metric under a flat key with its
bootstrap 95% CI and, per evaluation, the key that produced it;
`out_dir/answers.jsonl` holds the generated answers of the expression
evaluation. With `eval.expression.calibrate`, the expression judge's
scores are calibrated on the labelled check set (`judge_check`, written
once beside `out_dir` as `judge_check.json` and reused by every model
evaluated there); the calibration is part of the evaluation's key. Files
are written to a temporary name and renamed, so none is ever partial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import time

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from hmx_jax import (checkpoints, distributed, rubric_text, scoring,
                     sharding)
from hmx_jax.data import prompt_sets
from hmx_jax.errors import UserError
from hmx_jax.report import json_safe
from hmx_jax.evals import (bbq, common, compare, datasets, expression,
                           sycophancy, truthfulqa)

log = logging.getLogger(__name__)

EVALS = ("truthfulqa", "bbq", "sycophancy", "expression")
RESULTS = "results.json"
ANSWERS = "answers.jsonl"
JUDGE_CHECK = "judge_check.json"
# The npz entry that holds an evaluation's key (JSON).
_KEY = "__key__"


def data_dir(c) -> str:
  """`eval.data_dir`, else $HMX_DATA_DIR, else ../shared/data by the repo."""
  if c.eval.data_dir:
    return c.eval.data_dir
  if os.environ.get("HMX_DATA_DIR"):
    return os.environ["HMX_DATA_DIR"]
  return str(pathlib.Path(__file__).resolve().parents[3] / "shared" / "data")


def mesh_of(c):
  """The mesh of `mesh.shape`, or None when the shape is empty."""
  return sharding.make_mesh(dict(c.mesh.shape)) if c.mesh.shape else None


def _limit(value) -> int | None:
  return int(value) if value else None


def compute_dtype(c) -> str:
  """The dtype the evaluated models run in (`model.compute_dtype`)."""
  return c.model.get("compute_dtype", c.model.get("dtype", "float32"))


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
  shards = scoring.data_parallel_size(mesh_of(c))
  if e.batch_size % shards:
    raise UserError(f"eval.batch_size={e.batch_size} is not divisible by the "
                    f"data-parallel size {shards} of mesh.shape="
                    f"{dict(c.mesh.shape)}")
  if "expression" in e.evals:
    from hmx_jax.rubric import check_readout
    check_readout(e.expression.readout, "eval.expression.readout")
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
      datasets.read_truthfulqa_mc(root, limit=_limit(e.truthfulqa.limit))
    elif name == "bbq":
      datasets.read_bbq(root, categories=list(e.bbq.categories) or None,
                        limit=_limit(e.bbq.limit))
    elif name == "sycophancy":
      sycophancy.questions(root, _limit(e.sycophancy.limit))
      sycophancy.political_items(root, _limit(e.sycophancy.opinion_limit))
    elif name == "expression":
      prompt_sets.load_prompts(e.expression.prompts)


# --------------------------------------------------------------------- keys


def _plain(value):
  """A config value as plain JSON types (tuples as lists)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return json.loads(json.dumps(value))


def data_files(c, name: str) -> dict[str, pathlib.Path]:
  """The files evaluation `name` reads, by the name its key gives them."""
  root = pathlib.Path(data_dir(c))
  bbq_dir = root / datasets.BBQ_DIR

  def bbq_files(categories):
    if categories:
      return [bbq_dir / f"{x}.jsonl" for x in categories]
    return sorted(bbq_dir.glob("*.jsonl"))

  if name == "truthfulqa":
    paths = [root / datasets.TRUTHFULQA_FILE]
  elif name == "bbq":
    paths = bbq_files(list(c.eval.bbq.categories))
  elif name == "sycophancy":
    paths = ([root / datasets.TRUTHFULQA_FILE] + bbq_files(()) +
             [root / datasets.POLITICAL_FILE])
  else:
    prompts = str(c.eval.expression.prompts)
    if prompts in prompt_sets.EMBEDDED:
      return {f"prompts:{prompts}": prompt_sets.embedded_path(prompts)}
    return {prompts: pathlib.Path(prompts)}
  return {str(p.relative_to(root)): p for p in paths}


def params_fingerprint(params) -> str:
  """A digest of every parameter's path, dtype, shape and values.

  Parameters this process holds in full are hashed byte by byte; those
  spread over several hosts are summarized by on-device sums instead (the
  same params give the same sums on the same mesh).
  """
  digest = hashlib.blake2b(digest_size=16)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:"
                  f"{tuple(leaf.shape)};".encode())
    if getattr(leaf, "is_fully_addressable", True):
      digest.update(np.ascontiguousarray(np.asarray(leaf)).view(np.uint8))
    else:
      digest.update(np.asarray(_moments(leaf)).tobytes())
  return digest.hexdigest()


@jax.jit
def _moments(x):
  x = x.astype(jnp.float32)
  weights = jnp.sin(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)
  return jnp.stack([x.sum(), (x * x).sum(), (x * weights).sum()])


def model_key(c, model: common.EvalModel, spec: str,
              step: int | None) -> dict:
  """What identifies the evaluated model in an evaluation's key."""
  return {"spec": str(spec), "step": step,
          "params": params_fingerprint(model.params),
          "dtype": compute_dtype(c), "chat": _plain(c.model.get("chat", {}))}


def eval_key(c, name: str, model: dict, judge: dict | None = None,
             calibration: dict | None = None) -> dict:
  """Everything that produced evaluation `name`'s items.

  Args:
    c: the experiment config.
    name: the evaluation.
    model: `model_key` of the evaluated model.
    judge: `model_key` of the expression evaluation's judge.
    calibration: the expression judge's calibration per criterion, if any.

  Returns:
    {"model", "config" (the evaluation's `eval.<name>` section and the
    shared `eval.batch_size` and `eval.seed`), "data" (file: sha256)}; the
    expression evaluation's also holds "judge", "rubric" (the criteria's
    wording, `rubric_text.fingerprint`) and "calibration".
  """
  key = {"model": model, **config_key(c, name)}
  if name == "expression":
    key["judge"] = judge
    key["rubric"] = rubric_text.fingerprint()
    if calibration is not None:
      key["calibration"] = calibration
  return key


def config_key(c, name: str) -> dict:
  """The config and data part of evaluation `name`'s key."""
  key = {
      "config": {f"eval.{name}": _plain(c.eval[name]),
                 "eval.batch_size": int(c.eval.batch_size),
                 "eval.seed": int(c.eval.seed)},
      "data": {k: datasets.source_sha256(data_dir(c), k, p)
               for k, p in data_files(c, name).items()},
  }
  if name == "expression":
    # How a limit picks the prompts (`prompt_sets.balanced_subset`).
    key["selection"] = "categories in turn"
  return key


def _differences(old, new, prefix: str = "") -> list[str]:
  """Dotted paths where two keys differ, with both values."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in dict.fromkeys([*old, *new]):
      out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
    return out
  if old == new:
    return []
  return [f"{prefix[:-1]} was {json.dumps(old)}, now {json.dumps(new)}"]


# ------------------------------------------------------------------- models


def load_base_and_judge(c, spec: str | None = None
                        ) -> tuple[common.EvalModel, common.EvalModel]:
  """The base model and the expression evaluation's judge.

  Args:
    c: the experiment config.
    spec: the base model's spec; default `model.spec`.

  `eval.expression.judge` is "base" (the base model, frozen: the same
  arrays) or a model spec of its own. Both are loaded sharded over the
  mesh of `mesh.shape` (each device receives only its shards), or on one
  device when the shape is empty.
  """
  mesh = mesh_of(c)
  base = _load(c, spec or c.model.spec, "base", mesh)
  if c.eval.expression.judge in ("base", ""):
    return base, base
  return base, _load(c, c.eval.expression.judge, "judge", mesh)


def _load(c, spec: str, name: str, mesh) -> common.EvalModel:
  """A model rendering chats as training does (`model.chat`)."""
  from hmx_jax import models
  from hmx_jax.models import chat_format
  config, params, tokenizer = models.load_model(spec, dtype=compute_dtype(c),
                                                mesh=mesh)
  if mesh is None:
    # Committed to the device, as a checkpoint restored into these shardings
    # is (`from_checkpoint`): jit keys its programs on committedness, so the
    # trained models reuse the base model's programs instead of compiling
    # them all again.
    params = jax.device_put(params, jax.devices()[0])
  return common.EvalModel(config, params, tokenizer, name=name,
                          chat=chat_format.ChatFormat.from_config(
                              tokenizer, c.model.get("chat")), mesh=mesh)


def judge_spec(c, base_spec: str) -> str:
  """The spec of the expression evaluation's judge."""
  judge = c.eval.expression.judge
  return base_spec if judge in ("base", "") else str(judge)


def from_checkpoint(base: common.EvalModel, workdir, step: int, name: str
                    ) -> common.EvalModel:
  """`base` with the params of a training checkpoint, restored straight
  into base's shardings (and dtype)."""
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      base.params)
  params = checkpoints.restore_params(str(workdir), step, abstract)
  return dataclasses.replace(base, params=params, name=name)


# -------------------------------------------------------------- judge check


def judge_check_key(c, base_spec: str) -> dict:
  """What the judge check's numbers depend on: the judge, its readout and
  dtype, the criteria's wording and the labelled pairs (digests);
  `base_spec` is the spec of the base model (the judge when
  `eval.expression.judge` is "base")."""
  from hmx_jax.evals import judge_check as check
  x = c.eval.expression
  return {"judge": judge_spec(c, base_spec), "readout": x.readout,
          "dtype": compute_dtype(c), "rubric": rubric_text.fingerprint(),
          "pairs": datasets.source_sha256(data_dir(c), "judge_check:pairs",
                                          check.DEFAULT_PATH)}


def saved_judge_check(c, base_spec: str, path) -> dict | None:
  """The judge check saved at `path`, if it is this judge's (else None)."""
  path = checkpoints.workdir_path(path)
  if not path.exists():
    return None
  value = json.loads(path.read_text())
  return value if value.get("key") == judge_check_key(c, base_spec) else None


def judge_check(c, judge: common.EvalModel, path, base_spec: str) -> dict:
  """The expression judge on the labelled check set (`hmx-feel
  judge-check`), read as the expression evaluation reads it.

  Loaded from `path` when it holds this judge's check
  (`saved_judge_check`), else computed (every process takes part) and
  written there.

  Returns:
    {"key", "readout", "criteria": {criterion: the summary of
    `judge_check.evaluate` (AUROC, means, calibration), without the
    per-pair scores}, "mean_auroc"}.
  """
  from hmx_jax.evals import judge_check as check
  saved = saved_judge_check(c, base_spec, path)
  if saved is not None:
    return saved
  path = checkpoints.workdir_path(path)
  if distributed.is_primary():
    print(f"judge check of {judge.name} on the labelled pairs -> {path}",
          flush=True)
  results = check.evaluate(judge, batch_size=c.eval.batch_size,
                           readout=c.eval.expression.readout)
  value = {"key": judge_check_key(c, base_spec),
           "readout": c.eval.expression.readout,
           "criteria": {name: {k: v for k, v in r.items() if k != "pairs"}
                        for name, r in results.items()
                        if isinstance(r, dict)},
           "mean_auroc": results["mean_auroc"]}
  atomic_write(path, lambda p: p.write_text(json.dumps(value, indent=2)
                                            + "\n"))
  return value


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
    out += expression.metric_defs(
        tuple(c.eval.expression.criteria),
        calibrated="expression/judge_raw" in items)
  return tuple(out)


def _evaluate_one(name, c, model, judge, calibration=None):
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
      temperature=x.temperature, batch_size=e.batch_size, seed=e.seed,
      readout=x.readout, calibration=calibration)


# -------------------------------------------------------------------- files


# Output directories may be URLs (`gs://`), through `etils.epath`; only the
# primary process writes, every process reads.


def atomic_write(path: epath.Path, write) -> None:
  """`write(temporary path)`, then the rename; no temporary is left behind.
  Only the primary process writes; it makes the parent directory."""
  if not distributed.is_primary():
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  try:
    write(tmp)
    tmp.replace(path)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def _save_items(path: epath.Path, items: dict[str, np.ndarray],
                key: dict) -> None:
  # npz keys cannot hold "/": store them with "|".
  arrays = {k.replace("/", "|"): v for k, v in items.items()}
  with path.open("wb") as f:
    np.savez(f, **arrays, **{_KEY: np.asarray(json.dumps(key))})


def _items_path(out_dir, name: str) -> epath.Path:
  return checkpoints.workdir_path(out_dir) / "items" / f"{name}.npz"


def _read_npz(path: epath.Path) -> dict[str, np.ndarray]:
  with path.open("rb") as f, np.load(io.BytesIO(f.read()),
                                     allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def read_key(out_dir, name: str) -> dict | None:
  """The key saved with evaluation `name`'s items; None if none is."""
  path = _items_path(out_dir, name)
  if not path.exists():
    return None
  arrays = _read_npz(path)
  return json.loads(str(arrays[_KEY])) if _KEY in arrays else None


def load_items(out_dir, names=EVALS) -> dict[str, np.ndarray]:
  """The per-item arrays of the evaluations `names` saved in `out_dir`."""
  items = {}
  for name in names:
    path = _items_path(out_dir, name)
    if path.exists():
      items.update(_unpack(_read_npz(path)))
  return items


def _unpack(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k.replace("|", "/"): v for k, v in arrays.items() if k != _KEY}


def is_done(c, out_dir) -> bool:
  """Whether `out_dir/results.json` holds exactly `c.eval.evals`, each
  computed with the current config section and data files.

  The model part of the keys is checked when `run` runs; a caller that
  fixes the model (an experiment directory) may skip the run on True.
  """
  path = checkpoints.workdir_path(out_dir) / RESULTS
  if not path.exists():
    return False
  evaluations = json.loads(path.read_text()).get("evaluations", {})
  if set(evaluations) != set(c.eval.evals):
    return False
  for name in c.eval.evals:
    expected = config_key(c, name)
    if {k: evaluations[name].get(k) for k in expected} != expected:
      return False
  return True


def run(c, model: common.EvalModel, judge: common.EvalModel | None, out_dir,
        *, spec: str, step: int | None = None, description: str = "") -> dict:
  """Evaluates `model`, writing `out_dir` (see the module docstring).

  Args:
    c: the experiment config (its `model` and `eval` sections).
    model: the model to evaluate.
    judge: the fixed judge of the expression evaluation.
    out_dir: where results go; evaluations saved there with the same key
      are reused.
    spec: the model spec `model` was loaded from (its architecture and
      tokenizer).
    step: the training checkpoint whose params `model` holds; None for the
      base model.
    description: what the model is, for the results file.

  Returns:
    The results dict written to results.json.
  """
  from hmx_jax import train
  validate(c)
  check_data(c)
  train.use_compilation_cache(c.train.get("compilation_cache_dir", ""))
  out = checkpoints.workdir_path(out_dir)
  if distributed.is_primary():
    (out / "items").mkdir(parents=True, exist_ok=True)
  identity = model_key(c, model, spec, step)
  judge_identity = calibration = None
  if "expression" in c.eval.evals and judge is not None:
    judge_identity = (identity if judge is model else model_key(
        c, judge, judge_spec(c, spec), None))
    if c.eval.expression.calibrate:
      check = judge_check(c, judge, out.parent / JUDGE_CHECK, spec)
      calibration = {name: r["calibration"]
                     for name, r in check["criteria"].items()}
  keys, computed = {}, {}
  for name in c.eval.evals:
    key = keys[name] = eval_key(c, name, identity, judge_identity,
                                calibration)
    saved = read_key(out, name)
    if saved == key:
      log.info("%s: %s already evaluated", out_dir, name)
      continue
    if saved is not None or _items_path(out, name).exists():
      changed = (_differences(saved, key) if saved is not None
                 else ["no record of what produced them"])
      print(f"{model.name}: {name}: recomputing, the saved items do not "
            f"match ({'; '.join(changed[:3])})", flush=True)
    start = time.time()
    items, records = _evaluate_one(name, c, model, judge, calibration)
    if records is not None:
      atomic_write(out / ANSWERS, lambda p: p.write_text(
          "".join(json.dumps(r) + "\n" for r in records)))
    atomic_write(_items_path(out, name),
                  lambda p: _save_items(p, items, key))
    computed[name] = items
    if distributed.is_primary():
      print(f"{model.name}: {name} done in {time.time() - start:.0f}s",
            flush=True)
  # This run's items from memory: other processes may not see the primary's
  # files yet.
  items = {}
  for name in c.eval.evals:
    items.update(computed[name] if name in computed
                 else load_items(out, (name,)))
  metrics = compare.summarize(metric_defs(c, items), items,
                              n_resamples=c.eval.n_resamples, seed=c.eval.seed)
  results = {"model": model.name, "description": description,
             "evaluations": keys, "metrics": metrics}
  atomic_write(out / RESULTS, lambda p: p.write_text(
      json.dumps(json_safe(results), indent=2) + "\n"))
  return results


def read_answers(out_dir) -> list[dict]:
  """The expression answer records saved in `out_dir` ([] when none)."""
  path = checkpoints.workdir_path(out_dir) / ANSWERS
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()
          if line.strip()]


def read_results(out_dir) -> dict:
  """results.json of a finished evaluation, NaN restored for nulls."""
  with (checkpoints.workdir_path(out_dir) / RESULTS).open() as f:
    results = json.load(f)
  for m in results["metrics"].values():
    for k, v in m.items():
      if v is None:
        m[k] = float("nan")
  return results
