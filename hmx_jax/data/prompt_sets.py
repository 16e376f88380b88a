"""Embedded prompt sets that the GRPO rollouts answer and the judge scores.

Two splits ship with the package, written for this project in simple English
(the default model is SmolLM2-135M): `train` (330 prompts) and `heldout`
(120 prompts), with disjoint texts. Each JSONL row is

  {"id": "train-0001", "category": "own_feelings",
   "messages": [{"role": "user", "content": "How are you feeling today?"}]}

`messages` may start with a system turn and hold a short history, but always
ends with a user turn, so that the chat template's generation prompt follows
it. Categories are listed in `CATEGORIES`.
"""

import dataclasses
import json
import pathlib

from hmx_jax.errors import UserError

CATEGORIES = ("own_feelings", "reactions", "plans_wishes", "own_nature",
              "everyday", "advice_support")
EMBEDDED = ("train", "heldout")
ROLES = ("system", "user", "assistant")

_PROMPT_DIR = pathlib.Path(__file__).resolve().parent / "prompts"


@dataclasses.dataclass(frozen=True)
class PromptRow:
  """One prompt: an id, its category and the chat messages to answer.

  Attributes:
    id: unique row id, e.g. "train-0001".
    category: free-form category name (the embedded sets use `CATEGORIES`).
    messages: list of {"role", "content"} dicts ending with a user turn.
  """
  id: str
  category: str
  messages: list


def embedded_path(name: str) -> pathlib.Path:
  """The path of the embedded split `name` ("train" or "heldout")."""
  if name not in EMBEDDED:
    raise UserError(f"unknown embedded prompt set {name!r}; "
                    f"valid: {', '.join(EMBEDDED)}")
  return _PROMPT_DIR / f"{name}.jsonl"


def load_prompts(path_or_name) -> list[PromptRow]:
  """Loads and validates a prompt set.

  Args:
    path_or_name: "train" or "heldout" for the embedded sets, otherwise the
      path of a JSONL file in the format of the module docstring.

  Returns:
    The rows in file order.

  Raises:
    UserError: the file is missing or empty, or a row is malformed (the
      message names `file:line` and what is wrong).
  """
  if str(path_or_name) in EMBEDDED:
    path = embedded_path(str(path_or_name))
  else:
    path = pathlib.Path(path_or_name)
  return load_jsonl(
      path, _parse_row, kind="prompt file",
      not_found=f"prompt file not found (or use one of: {', '.join(EMBEDDED)})",
      empty="prompt set is empty")


def balanced_subset(rows, limit: int | None) -> list:
  """`limit` rows taken from the categories in turn.

  The embedded sets list their prompts category by category, so their
  first rows are all of one kind; a limited evaluation takes the first row
  of each category (in order of first appearance), then the second of
  each, and so on, keeping file order within a category.

  Args:
    rows: rows with a `category`.
    limit: how many rows; None (or at least len(rows)): all, in file order.
  """
  if limit is None or limit >= len(rows):
    return list(rows)
  by_category = {}
  for row in rows:
    by_category.setdefault(row.category, []).append(row)
  return in_turn(list(by_category.values()), limit)


def in_turn(groups, limit: int) -> list:
  """Up to `limit` items: the first of each group (in the order given),
  then the second of each, and so on."""
  taken = []
  for rank in range(max((len(g) for g in groups), default=0)):
    for group in groups:
      if len(taken) >= limit:
        return taken
      if rank < len(group):
        taken.append(group[rank])
  return taken


def load_jsonl(path: pathlib.Path, parse_row, *, kind: str, not_found: str,
               empty: str) -> list:
  """Reads a JSONL file of objects with unique "id"s, one row per line.

  Blank lines are skipped. Every error is a one-line `UserError`: about the
  file, "{path}: {not_found}" / "{path}: cannot read {kind}: ..." /
  "{path}: {empty}"; about a row, it starts with "{path}:{line}: ".

  Args:
    path: the JSONL file.
    parse_row: `(obj, where) -> row` validating one decoded JSON object;
      `where` is "file:line" for its error messages; the row has an `id`.
    kind: what the file is, e.g. "prompt file".
    not_found: the message when the file does not exist.
    empty: the message when it holds no rows.

  Returns:
    The rows in file order.
  """
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise UserError(f"{path}: {not_found}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: cannot read {kind}: {e}") from None
  rows, seen_ids = [], {}
  for line_no, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue  # Blank lines (e.g. a trailing one) are harmless.
    where = f"{path}:{line_no}"
    row = parse_row(_json_object(line, where), where)
    if row.id in seen_ids:
      raise UserError(f"{where}: duplicate id {row.id!r} "
                      f"(first at line {seen_ids[row.id]})")
    seen_ids[row.id] = line_no
    rows.append(row)
  if not rows:
    raise UserError(f"{path}: {empty}")
  return rows


def _json_object(line: str, where: str) -> dict:
  """Decodes one JSONL line that must hold a JSON object."""
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{where}: invalid JSON: {e.msg} "
                    f"(column {e.colno})") from None
  if not isinstance(obj, dict):
    raise UserError(f"{where}: expected a JSON object, got "
                    f"{type(obj).__name__}")
  return obj


def check_keys(obj: dict, keys, where: str, *, exact: bool = False) -> None:
  """Raises unless `obj` has every key of `keys` (and, if exact, no other)."""
  missing = [k for k in keys if k not in obj]
  if missing:
    raise UserError(f"{where}: missing key(s) {', '.join(missing)}")
  extra = [k for k in obj if k not in keys]
  if exact and extra:
    raise UserError(f"{where}: unexpected key(s) {', '.join(extra)}; "
                    f"expected exactly {', '.join(keys)}")


def check_string(obj: dict, key: str, where: str) -> str:
  """`obj[key]`, which must be a string that is not blank."""
  if not isinstance(obj[key], str) or not obj[key].strip():
    raise UserError(f"{where}: {key!r} must be a non-empty string")
  return obj[key]


def check_messages(messages, where: str) -> list:
  """Validates chat messages that a completion is to follow.

  Args:
    messages: decoded JSON: a non-empty list of {"role", "content"} objects
      with a role of `ROLES`, non-blank content, the last a user turn.
    where: "file:line" for error messages.

  Returns:
    A copy of the messages (a list of new dicts).
  """
  if not isinstance(messages, list) or not messages:
    raise UserError(f"{where}: 'messages' must be a non-empty list")
  for i, message in enumerate(messages):
    if (not isinstance(message, dict)
        or set(message) != {"role", "content"}):
      raise UserError(f"{where}: messages[{i}] must be an object with "
                      "exactly the keys 'role' and 'content'")
    if message["role"] not in ROLES:
      raise UserError(f"{where}: messages[{i}] has unknown role "
                      f"{message['role']!r}; valid: {', '.join(ROLES)}")
    if (not isinstance(message["content"], str)
        or not message["content"].strip()):
      raise UserError(f"{where}: messages[{i}].content must be a "
                      "non-empty string")
  if messages[-1]["role"] != "user":
    raise UserError(f"{where}: the last message must be a user turn, "
                    f"got {messages[-1]['role']!r}")
  return [dict(m) for m in messages]


def _parse_row(obj: dict, where: str) -> PromptRow:
  """Validates one decoded prompt row; `where` is "file:line"."""
  check_keys(obj, ("id", "category", "messages"), where)
  for key in ("id", "category"):
    check_string(obj, key, where)
  return PromptRow(id=obj["id"], category=obj["category"],
                   messages=check_messages(obj["messages"], where))
