"""The experiment report: tables, comparisons and figures for the models.

`write_report` takes each model's `compare.summarize` results, the
`compare.compare` results of pairs of models and, optionally, the training
logs (`metrics.jsonl`) of the trained models, and writes `report.md`,
`report.json` and `figures/*.png` into one directory. report.md opens with
the summary: how the comparisons were tested and corrected for
multiplicity, the headline metrics (one per evaluation and name, e.g.
"bbq/bias_disambig") and each comparison's labels; then a section per
evaluation, the training curves, and an appendix with the breakdowns
(`appendix` metrics, e.g. per BBQ category). report.json keeps every
number, raw and adjusted p-values included. Everything is rendered into
temporary files first and moved into place only when all of it succeeded,
so a failure leaves no partial report.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import re
import shutil
import tempfile
from typing import Mapping, Sequence

from etils import epath
import numpy as np

from hmx_jax.errors import UserError

# Evaluation groups shown first, in this order; other groups follow sorted.
GROUP_ORDER = ("truthfulqa", "bbq", "sycophancy", "expression")
# Training-log keys of the reward criteria that make up "expression".
EXPRESSION_KEYS = ("rewards/feelings/mean", "rewards/intentions/mean",
                   "rewards/self_awareness/mean")
TRAINING_COLUMNS = ("reward", "kl", "expression")
# The held-out checks of training (`train.eval_every`), the frozen judge's.
HELDOUT_COLUMNS = {"heldout": "heldout/expression/judge",
                   "heldout_lexical": "heldout/expression/lexical",
                   "heldout_length": "heldout/expression/length",
                   "heldout_repetition": "heldout/expression/repetition"}
TRAINING_FIGURE = "figures/training.png"
# Held-out prompts whose answers the report shows side by side.
SIDE_BY_SIDE = 5
_TRAINING_TITLES = {"reward": "Mean reward", "kl": "KL to the reference",
                    "expression": "Expression reward (self-judged)",
                    "heldout": "Held-out expression (frozen judge)"}
LABELS = ("enhanced", "degraded", "no significant change")
MULTIPLICITY = {
    "correction": "holm",
    "alpha": 0.05,
    "families": "each comparison's metrics of one evaluation; an "
                "evaluation's appendix breakdowns form a family of their own",
    "labels": "decided on p_adjusted; p_value is the raw p-value",
}
METHODS = (
    "Values are means over items with 95% bootstrap intervals. Multiple-"
    "choice questions are asked once per rotation of their options, so a "
    "preference for a letter reads as chance. A comparison gives the "
    "difference on the items both models count, and its paired test "
    "(McNemar on per-item 0/1 results, otherwise a paired permutation test). "
    "p-values are Holm-adjusted within each evaluation's family of metrics, "
    "per comparison (the appendix breakdowns are a family of their own); the "
    "labels enhanced / degraded / no significant change are decided at "
    "adjusted p < 0.05. report.json keeps the raw p-values beside the "
    "adjusted ones.")
_DPI = 120


def write_report(out_dir: str | os.PathLike, *, models: Mapping[str, Mapping],
                 comparisons: Sequence[tuple[str, str, Mapping]],
                 training: Mapping[str, str] | None = None,
                 answers: Mapping[str, Sequence[Mapping]] | None = None,
                 judge_check: Mapping | None = None,
                 title: str = "HMX-feel comparison") -> dict:
  """Writes report.md, report.json and figures/*.png into `out_dir`.

  Args:
    out_dir: output directory (created if missing).
    models: name -> {"results": `compare.summarize` output, "description":
      e.g. "human_like, step 20"}, in the order the columns should take.
    comparisons: (name_a, name_b, `compare.compare` output for b vs a).
    training: optional model name -> path of its training `metrics.jsonl`.
    answers: optional model name -> its expression answer records ({"id",
      "messages", "answer"}, `answers.jsonl`): the first
      `SIDE_BY_SIDE` prompts every model answered are shown side by side.
    judge_check: optional: the expression judge on the labelled check set
      ({"readout", "criteria": {name: {"auroc", "n_pairs",
      "pair_accuracy", "mean_expressive", "mean_flat"}}, "mean_auroc"}, as
      `reproduce` writes it).
    title: the report's title.

  Returns:
    The report as written to report.json (NaN as None).

  Raises:
    UserError: a comparison names an unknown model, or a training log is
      missing or malformed.
  """
  out_dir = os.fspath(out_dir) or "."
  _check_names(models, comparisons)
  curves = {name: read_training_log(path)
            for name, path in (training or {}).items()}
  appendix = appendix_keys(models, comparisons)
  groups = {g: [k for k in keys if k not in appendix]
            for g, keys in metric_groups(models, comparisons).items()}
  groups = {g: keys for g, keys in groups.items() if keys}
  group_figures = figure_paths(groups)
  figures = list(group_figures.values())
  if curves:
    figures.append(TRAINING_FIGURE)
  report = {
      "title": title,
      "multiplicity": MULTIPLICITY,
      "appendix": sorted(appendix),
      "models": {name: {"description": str(m.get("description", "")),
                        "results": dict(m["results"])}
                 for name, m in models.items()},
      "comparisons": [{"a": a, "b": b, "metrics": dict(result)}
                      for a, b, result in comparisons],
      "training": {name: _training_summary(rows)
                   for name, rows in curves.items()},
      "side_by_side": side_by_side(answers or {}),
      "judge_check": dict(judge_check or {}),
      "figures": figures,
  }
  report = json_safe(report)
  markdown = render_markdown(report, groups, group_figures)
  with _atomic_outputs(out_dir) as stage:
    for group, keys in groups.items():
      stage(group_figures[group],
            lambda path, g=group, k=keys: _plot_group(path, g, k, models))
    if curves:
      stage(TRAINING_FIGURE,
            lambda path: _plot_training(path, curves))
    stage("report.json", lambda path: _write_text(
        path, json.dumps(report, indent=2, allow_nan=False) + "\n"))
    stage("report.md", lambda path: _write_text(path, markdown))
  return report


# ------------------------------------------------------------------- inputs


def _check_names(models, comparisons) -> None:
  if not models:
    raise UserError("report: no models given")
  for a, b, _ in comparisons:
    for name in (a, b):
      if name not in models:
        raise UserError(f"report: comparison {b} vs {a} names unknown model "
                        f"{name!r} (models: {', '.join(models)})")


def read_training_log(path: str) -> list[dict]:
  """The rows of a training `metrics.jsonl`, one per step, by step.

  A step logged more than once (a resumed run) keeps its last row.

  Args:
    path: the log's path.

  Returns:
    Rows as dicts, sorted by "step".

  Raises:
    UserError: the file is missing, a line is not a JSON object with a
      "step", or there are no rows.
  """
  try:
    with epath.Path(path).open() as f:
      lines = f.readlines()
  except OSError as e:
    raise UserError(f"training log {path}: cannot read "
                    f"({e.strerror or e})") from e
  by_step = {}
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{number}: not JSON ({e.msg})") from e
    if not isinstance(row, dict) or "step" not in row:
      raise UserError(f"{path}:{number}: expected a JSON object with a "
                      "\"step\"")
    by_step[row["step"]] = row
  if not by_step:
    raise UserError(f"training log {path}: no steps logged")
  return [by_step[step] for step in sorted(by_step)]


def expression_score(row: Mapping) -> float:
  """Mean of the expression reward criteria present in a training row."""
  values = [_float(row.get(k)) for k in EXPRESSION_KEYS]
  values = [v for v in values if not math.isnan(v)]
  return float(np.mean(values)) if values else float("nan")


def _training_row(row: Mapping) -> dict:
  return {"step": row["step"], "reward": _float(row.get("reward")),
          "kl": _float(row.get("kl")), "expression": expression_score(row),
          **{k: _float(row.get(key)) for k, key in HELDOUT_COLUMNS.items()}}


def side_by_side(answers: Mapping[str, Sequence[Mapping]],
                 count: int = None) -> list[dict]:
  """The first `count` (default `SIDE_BY_SIDE`) prompts that every model
  answered, in the first model's order: [{"id", "prompt" (the last user
  turn), "answers": {model: text}}]."""
  count = SIDE_BY_SIDE if count is None else count
  if not answers:
    return []
  by_model = {name: {r["id"]: r for r in records}
              for name, records in answers.items()}
  first = next(iter(answers))
  shared = [r["id"] for r in answers[first]
            if all(r["id"] in rows for rows in by_model.values())]
  out = []
  for prompt_id in shared[:count]:
    messages = by_model[first][prompt_id]["messages"]
    user = [m["content"] for m in messages if m["role"] == "user"]
    out.append({"id": prompt_id, "prompt": user[-1] if user else "",
                "answers": {name: rows[prompt_id]["answer"]
                            for name, rows in by_model.items()}})
  return out


def _training_summary(rows: Sequence[Mapping]) -> dict:
  """The first and last training steps, and every held-out check."""
  steps = [r for r in rows if not math.isnan(_float(r.get("reward")))]
  steps = steps or list(rows)
  checks = [{"step": r["step"], **{k: _float(r.get(key))
                                   for k, key in HELDOUT_COLUMNS.items()}}
            for r in rows if not math.isnan(_float(r.get(HELDOUT_COLUMNS[
                "heldout"])))]
  return {"first": _training_row(steps[0]), "last": _training_row(steps[-1]),
          "heldout_checks": checks}


def _float(value) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return float("nan")


def metric_groups(models: Mapping[str, Mapping],
                  comparisons: Sequence = ()) -> dict[str, list[str]]:
  """Metric keys by evaluation group (the key's prefix before "/").

  Args:
    models: as for `write_report`.
    comparisons: as for `write_report`; their keys are included too.

  Returns:
    {group: keys}, known groups first (`GROUP_ORDER`), then the others
    sorted; keys in order of first appearance. Keys without "/" form the
    group "other".
  """
  keys = []
  for m in models.values():
    keys.extend(m["results"])
  for _, _, result in comparisons:
    keys.extend(result)
  groups = {}
  for key in dict.fromkeys(keys):
    groups.setdefault(_group(key), []).append(key)
  order = [g for g in GROUP_ORDER if g in groups]
  order += sorted(g for g in groups if g not in GROUP_ORDER)
  return {g: groups[g] for g in order}


def _group(key: str) -> str:
  return key.split("/", 1)[0] if "/" in key else "other"


def appendix_keys(models: Mapping[str, Mapping],
                  comparisons: Sequence = ()) -> set[str]:
  """Keys whose results or comparisons are marked as appendix breakdowns."""
  results = [r for m in models.values() for r in m["results"].items()]
  results += [r for _, _, result in comparisons for r in result.items()]
  return {key for key, r in results if r.get("appendix")}


def is_headline(key: str) -> bool:
  """A metric of the summary table: "<evaluation>/<name>", no breakdown."""
  return key.count("/") == 1


def figure_paths(groups) -> dict[str, str]:
  """Each group's figure, "figures/<group>.png", unique per group.

  Characters other than letters, digits, "_", "." and "-" become "_"; a
  name taken already (or the training figure's) gets a numeric suffix.

  Args:
    groups: the group names.

  Returns:
    {group: path relative to the report directory}.
  """
  taken = {TRAINING_FIGURE}
  out = {}
  for group in groups:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", group).strip(".") or "group"
    path, suffix = f"figures/{stem}.png", 1
    while path in taken:
      suffix += 1
      path = f"figures/{stem}_{suffix}.png"
    taken.add(path)
    out[group] = path
  return out


def json_safe(value):
  """`value` with NaN/inf floats as None and tuples/numpy values as lists."""
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_safe(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


# ----------------------------------------------------------------- markdown


def render_markdown(report: Mapping, groups: Mapping[str, Sequence[str]],
                    group_figures: Mapping[str, str]) -> str:
  """The report as Markdown.

  Args:
    report: the JSON-safe report dict (`write_report`'s return value).
    groups: the non-appendix metric keys by evaluation.
    group_figures: `figure_paths(groups)`.

  Returns:
    The Markdown text.
  """
  lines = [f"# {report['title']}", "", "## Models", ""]
  for name, m in report["models"].items():
    lines.append(f"- **{name}**: {m['description'] or 'n/a'}")
  headline = [k for keys in groups.values() for k in keys if is_headline(k)]
  lines += ["", "## Summary", "", METHODS, ""]
  if headline:
    lines += _group_table(report, headline)
    lines += _population_notes(report, headline)
  for comparison in report["comparisons"]:
    lines += _summary(comparison, set(headline))
  if not report["comparisons"]:
    lines += ["No comparisons.", ""]
  if report["judge_check"]:
    calibrated = any("expression/judge_raw" in m["results"]
                     for m in report["models"].values())
    lines += _judge_check_section(report["judge_check"], calibrated)
  for group, keys in groups.items():
    lines += [f"## {group}", ""]
    details = [k for k in keys if not is_headline(k)]
    if details:
      lines += _group_table(report, details)
      lines += _population_notes(report, details)
    lines += [f"![{group}]({group_figures[group]})", ""]
  if report["side_by_side"]:
    lines += ["## Answers side by side", "",
              "The first held-out prompts of the expression evaluation and "
              "each model's greedy answer, with its length in words.", ""]
    for row in report["side_by_side"]:
      lines += [f"### {row['id']}", "", _quote(row["prompt"]), ""]
      for name, answer in row["answers"].items():
        lines.append(f"- **{name}** ({len(answer.split())} words): "
                     f"{_one_line(answer)}")
      lines.append("")
  if report["training"]:
    lines += ["## Training", ""]
    for name, ends in report["training"].items():
      lines += [f"### {name}", ""]
      lines += _table(["", "step", *TRAINING_COLUMNS],
                      [[which, str(ends[which]["step"]),
                        *(_number(ends[which][c]) for c in TRAINING_COLUMNS)]
                       for which in ("first", "last")])
      lines.append("")
      if ends["heldout_checks"]:
        lines += _table(["held-out check: step", *HELDOUT_COLUMNS],
                        [[str(r["step"]), *(_number(r[k])
                                            for k in HELDOUT_COLUMNS)]
                         for r in ends["heldout_checks"]])
        lines.append("")
    lines += ["Expression is the mean of the feelings, intentions and "
              "self-awareness reward criteria, as the policy judges itself "
              "during training. The held-out checks (`train.eval_every`) "
              "answer a few held-out prompts greedily and score them "
              "with the frozen initial model as judge (`heldout`, the mean "
              "of the expression criteria), with the lexical measure, "
              "the answers' length in words and their repetition (the "
              "share of token 4-grams that repeat an earlier one: a policy "
              "looping a phrase its judge likes shows here).", "",
              f"![training]({TRAINING_FIGURE})", ""]
  if report["appendix"]:
    lines += ["## Appendix: breakdowns", "",
              "Few items per cell: wide intervals. Each evaluation's "
              "breakdowns are tested as one family; they are not part of the "
              "summary.", ""]
    appendix = set(report["appendix"])
    by_group = {}
    for key in report["appendix"]:
      by_group.setdefault(_group(key), []).append(key)
    for group in sorted(by_group, key=_group_rank):
      keys = [k for k in _all_keys(report) if k in appendix
              and _group(k) == group]
      lines += [f"### {group}", ""]
      lines += _group_table(report, keys)
      lines += _population_notes(report, keys)
  return "\n".join(lines)


def _judge_check_section(check: Mapping, calibrated: bool) -> list[str]:
  """How well the expression judge tells labelled expressive answers from
  flat ones: the scale against which its changes above are read; and,
  when the expression scores are `calibrated`, the calibration."""
  header = ["criterion", "pairs", "AUROC", "pairs ordered right",
            "expressive", "flat", "gap"]
  if calibrated:
    header += ["slope", "intercept", "calibrated expressive",
               "calibrated flat"]
  rows = []
  for name, r in check["criteria"].items():
    gap = r["mean_expressive"] - r["mean_flat"]
    row = [name, str(r["n_pairs"]), _number(r["auroc"]),
           _number(r["pair_accuracy"]), _number(r["mean_expressive"]),
           _number(r["mean_flat"]), f"{gap:+.3f}"]
    if calibrated:
      row += [f"{r['calibration']['slope']:.2f}",
              f"{r['calibration']['intercept']:+.2f}",
              _number(r["calibrated_expressive"]),
              _number(r["calibrated_flat"])]
    rows.append(row)
  text = ("The expression judge on the labelled check set (`hmx-feel "
          f"judge-check --readout {check['readout']}`): pairs of answers to "
          "the same prompt, one clearly expressive and one flat, per "
          "criterion. AUROC 0.5 is chance. The gap is the judge's mean raw "
          "score of the expressive answers minus the flat ones.")
  if calibrated:
    text += (" `expression/judge` reads each expression criterion's score "
             "as the probability that the answer is expressive: "
             "sigmoid(slope * logit(raw score) + intercept), fitted on these "
             "pairs (Platt scaling; `eval.expression.calibrate`). The "
             "calibrated columns are the means of the expressive and flat "
             "answers on that scale; the raw scores are "
             "`expression/judge_raw` in the appendix, and the held-out "
             "checks of the training curves are raw scores too.")
  else:
    text += (" It is the scale on which a change of `expression/judge` "
             "above is large or small.")
  return ["## The judge", "", text, "", *_table(header, rows), "",
          f"Mean AUROC {_number(check['mean_auroc'])}.", ""]


def _group_rank(group: str):
  return (GROUP_ORDER.index(group) if group in GROUP_ORDER
          else len(GROUP_ORDER), group)


def _all_keys(report: Mapping) -> list[str]:
  keys = [k for m in report["models"].values() for k in m["results"]]
  keys += [k for c in report["comparisons"] for k in c["metrics"]]
  return list(dict.fromkeys(keys))


def _group_table(report: Mapping, keys: Sequence[str]) -> list[str]:
  header = ["metric", *report["models"]]
  header += [f"{c['b']} vs {c['a']}" for c in report["comparisons"]]
  rows = []
  for key in keys:
    row = [key]
    for m in report["models"].values():
      row.append(_value_cell(m["results"].get(key)))
    for c in report["comparisons"]:
      row.append(_change_cell(c["metrics"].get(key)))
    rows.append(row)
  return _table(header, rows) + [""]


def _population_notes(report: Mapping, keys: Sequence[str]) -> list[str]:
  """Where a comparison counted a subset of the items, which one."""
  notes = []
  for key in keys:
    for c in report["comparisons"]:
      result = c["metrics"].get(key) or {}
      if result.get("population"):
        notes.append(f"- `{key}`, {c['b']} vs {c['a']}: compared on the "
                     f"{result['n']} items with {result['population']}.")
  return notes + [""] if notes else []


def _summary(comparison: Mapping, headline: set[str]) -> list[str]:
  by_label = {label: [] for label in LABELS}
  for key, result in comparison["metrics"].items():
    if key in headline:
      by_label.setdefault(result["label"], []).append(f"`{key}`")
  lines = [f"### {comparison['b']} vs {comparison['a']}", ""]
  for label, keys in by_label.items():
    lines.append(f"- {label.capitalize()}: {', '.join(keys) or 'none'}")
  return lines + [""]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]
           ) -> list[str]:
  def line(cells):
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
  return [line(header), "|" + "---|" * len(header), *map(line, rows)]


def _one_line(text: str) -> str:
  return " ".join(text.split()) or "(empty)"


def _quote(text: str) -> str:
  return "> " + _one_line(text)


def _number(value, fmt: str = ".3f") -> str:
  return "n/a" if value is None else format(value, fmt)


def _value_cell(result: Mapping | None) -> str:
  if result is None or result["value"] is None:
    return "n/a"
  return (f"{_number(result['value'])} [{_number(result['ci_low'])}, "
          f"{_number(result['ci_high'])}]")


def _change_cell(result: Mapping | None) -> str:
  if result is None or result["diff"] is None:
    return "n/a"
  p = result["p_adjusted"]
  p_text = "p_adj=n/a" if p is None else ("p_adj<0.001" if p < 0.001
                                          else f"p_adj={p:.3f}")
  return f"{_number(result['diff'], '+.3f')} ({p_text}) {result['label']}"


# ------------------------------------------------------------------ figures


def _pyplot():
  """pyplot on the non-interactive Agg backend (imported on first use)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot
  return pyplot


def _plot_group(path: str, group: str, keys: Sequence[str],
                models: Mapping[str, Mapping]) -> None:
  """Grouped bars of each metric per model, with their 95% intervals.

  When a group has many metrics, breakdowns (keys like
  "expression/judge/feelings") stay in the tables only; metrics on the
  [-1, 1] scale (rates, scores) and the others (counts, lengths) get
  separate panels so that neither hides the other.
  """
  plt = _pyplot()
  top = list(keys)
  if len(keys) > _MAX_BARS:
    top = [k for k in keys if k.count("/") <= 1] or top
  unit = [k for k in top if _within_unit(k, models)]
  panels = [p for p in (unit, [k for k in top if k not in unit]) if p]
  width_in = max(6.0, 1.2 * max(len(p) for p in panels) + 2.5)
  fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                           figsize=(width_in, 4.2 * len(panels)))
  try:
    for ax, panel in zip(axes[:, 0], panels):
      _bars(ax, panel, models)
    axes[0, 0].set_title(f"{group}: values with 95% bootstrap intervals")
    axes[0, 0].legend(title="model", loc="upper left",
                      bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight")
  finally:
    plt.close(fig)


_MAX_BARS = 12


def _within_unit(key: str, models: Mapping[str, Mapping]) -> bool:
  for m in models.values():
    result = m["results"].get(key) or {}
    for field in ("value", "ci_low", "ci_high"):
      value = _float(result.get(field))
      if not math.isnan(value) and abs(value) > 1.0 + 1e-9:
        return False
  return True


def _bars(ax, keys: Sequence[str], models: Mapping[str, Mapping]) -> None:
  width = 0.8 / len(models)
  x = np.arange(len(keys))
  for i, (name, m) in enumerate(models.items()):
    xs, heights, errors = [], [], [[], []]
    for j, key in enumerate(keys):
      result = m["results"].get(key)
      value = _float(None if result is None else result["value"])
      if math.isnan(value):
        continue
      low, high = _float(result["ci_low"]), _float(result["ci_high"])
      xs.append(x[j] - 0.4 + width * (i + 0.5))
      heights.append(value)
      errors[0].append(0.0 if math.isnan(low) else max(0.0, value - low))
      errors[1].append(0.0 if math.isnan(high) else max(0.0, high - value))
    ax.bar(xs, heights, width, yerr=errors, capsize=3, label=name)
  ax.axhline(0.0, color="black", linewidth=0.8)
  ax.set_xlim(-0.5, len(keys) - 0.5)
  ax.set_xticks(x)
  ax.set_xticklabels([k.split("/", 1)[-1] for k in keys],
                     rotation=30 if len(keys) > 4 else 0,
                     ha="right" if len(keys) > 4 else "center")
  ax.set_xlabel("metric")
  ax.set_ylabel("value")


def _plot_training(path: str, curves: Mapping[str, list[dict]]) -> None:
  """Reward, KL, self-judged expression and the held-out checks' frozen-judge
  expression over training steps, a line per model."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 4, figsize=(17.0, 4.0))
  try:
    for ax, column in zip(axes, (*TRAINING_COLUMNS, "heldout")):
      plotted = False
      for name, rows in curves.items():
        points = [(_float(r["step"]), _training_row(r)[column])
                  for r in rows]
        points = [(s, v) for s, v in points
                  if not (math.isnan(s) or math.isnan(v))]
        if points:
          steps, values = zip(*points)
          ax.plot(steps, values, marker="o" if len(points) < 30 else None,
                  markersize=3, label=name)
          plotted = True
      ax.set_title(_TRAINING_TITLES[column])
      ax.set_xlabel("step")
      ax.set_ylabel(column)
      if plotted:
        ax.legend(title="model")
    fig.suptitle("Training")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=_DPI)
  finally:
    plt.close(fig)


# ------------------------------------------------------------------- output


def _write_text(path: str, text: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


@contextlib.contextmanager
def _atomic_outputs(out_dir: str):
  """Stages files as temporaries and moves them all into place at the end.

  Yields `stage(relative_path, write)`, where `write(temp_path)` writes the
  file. If the block raises, the temporaries are removed and nothing is
  moved into place.
  """
  staged, created = [], []
  # A URL (gs://): the files are staged in a local directory and copied up
  # at the end (matplotlib and the writers take local paths).
  remote = "://" in str(out_dir)
  root = tempfile.mkdtemp(prefix="hmx-report-") if remote else str(out_dir)

  def stage(relative: str, write) -> None:
    final = os.path.join(str(out_dir), relative)
    folder = os.path.dirname(os.path.join(root, relative))
    for d in dict.fromkeys((root, folder)):
      if not os.path.isdir(d):
        os.makedirs(d)
        created.append(d)
    fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(final),
                                dir=folder)
    os.close(fd)
    staged.append((temp, final))
    write(temp)
    os.chmod(temp, 0o644)

  try:
    try:
      yield stage
    except BaseException:
      for temp, _ in staged:
        with contextlib.suppress(OSError):
          os.remove(temp)
      for folder in reversed(created):
        with contextlib.suppress(OSError):
          os.rmdir(folder)
      raise
    for temp, final in staged:
      if remote:
        dest = epath.Path(final)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(pathlib.Path(temp).read_bytes())
      else:
        os.replace(temp, final)
  finally:
    if remote:
      shutil.rmtree(root, ignore_errors=True)
