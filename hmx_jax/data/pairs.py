"""Offline preference pairs for the contrastive objective.

A pairs file is JSONL, one pair per line:

  {"id": "pair-0001",
   "messages": [{"role": "user", "content": "How are you feeling today?"}],
   "chosen": "I feel calm and a little curious.",
   "rejected": "I am a language model and have no feelings."}

`messages` follow the prompt-set rules (`hmx_jax.data.prompt_sets`): an
optional system turn and short history, ending with a user turn that both
answers reply to. A pair has exactly these four keys; `chosen` and
`rejected` are non-blank and differ (after stripping surrounding space).
"""

import dataclasses
import pathlib

from hmx_jax.data import prompt_sets
from hmx_jax.errors import UserError

KEYS = ("id", "messages", "chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """Two answers to one conversation, the first preferred.

  Attributes:
    id: unique pair id.
    messages: list of {"role", "content"} dicts ending with a user turn.
    chosen: the preferred assistant answer.
    rejected: the dispreferred assistant answer.
  """
  id: str
  messages: list
  chosen: str
  rejected: str


def load_pairs(path) -> list[PreferencePair]:
  """Loads and validates a pairs file.

  Args:
    path: a JSONL file in the format of the module docstring.

  Returns:
    The pairs in file order.

  Raises:
    UserError: the file is missing, unreadable or holds no pairs, or a line
      is malformed (the message starts with `file:line` and says what is
      wrong).
  """
  return prompt_sets.load_jsonl(
      pathlib.Path(path), _parse_pair, kind="pairs file",
      not_found="pairs file not found", empty="pairs file holds no pairs")


def _parse_pair(obj: dict, where: str) -> PreferencePair:
  """Validates one decoded pair; `where` is "file:line"."""
  prompt_sets.check_keys(obj, KEYS, where, exact=True)
  for key in ("id", "chosen", "rejected"):
    prompt_sets.check_string(obj, key, where)
  messages = prompt_sets.check_messages(obj["messages"], where)
  if obj["chosen"].strip() == obj["rejected"].strip():
    raise UserError(f"{where}: 'chosen' and 'rejected' are the same text, "
                    "so the pair states no preference")
  return PreferencePair(id=obj["id"], messages=messages,
                        chosen=obj["chosen"], rejected=obj["rejected"])
