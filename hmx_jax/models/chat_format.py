"""One place that turns a conversation into a model's prompt tokens.

Every caller (rollout prompts, the rubric judge, the evaluations, chat)
renders through `ChatFormat`, which applies the checkpoint's own chat
template with the conventions a family needs:

- a template that refuses a system turn (Gemma 2 raises "System role not
  supported") gets the system text folded into the first user turn,
  separated by a blank line; this is found by rendering a probe
  conversation, not by the model's name;
- `enable_thinking` is passed to every template (Qwen3's opens a `<think>`
  block unless it is False; templates that do not read it ignore it);
- `date_string` is passed to every template, so Llama 3's system header
  holds a fixed date instead of today's (`strftime_now`), and prompts are a
  function of the config alone.

Chat text is encoded without adding special tokens (the template writes
its own BOS), as `apply_chat_template(..., tokenize=True)` does. Raw text
(the TruthfulQA primer, plain-text contexts) is encoded the way
lm-evaluation-harness does by default: with the tokenizer's own special
tokens (Gemma's and Llama 3's tokenizers add BOS, Qwen's and SmolLM2's
none), never doubling a BOS the text already starts with.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools
from typing import Any

# The separator between a folded system turn and the first user message.
SYSTEM_FOLD_SEPARATOR = "\n\n"
DEFAULT_DATE = "26 Jul 2024"


@dataclasses.dataclass(frozen=True, eq=False)
class ChatFormat:
  """A tokenizer's chat template with fixed rendering options.

  Attributes:
    tokenizer: a transformers tokenizer with a chat template.
    enable_thinking: passed to the template (Qwen3's thinking block).
    date_string: passed to the template (Llama 3's system header date).
  """
  tokenizer: Any
  enable_thinking: bool = False
  date_string: str = DEFAULT_DATE

  @classmethod
  def from_config(cls, tokenizer, chat_config=None) -> ChatFormat:
    """From the `model.chat` section of a run config (None: defaults)."""
    return cls(tokenizer, **dict(chat_config or {}))

  def _apply(self, messages, add_generation_prompt: bool) -> str:
    return self.tokenizer.apply_chat_template(
        list(messages), tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=self.enable_thinking, date_string=self.date_string)

  @functools.cached_property
  def folds_system(self) -> bool:
    """Whether the template refuses a system turn (it is then folded)."""
    probe = [{"role": "system", "content": "s"},
             {"role": "user", "content": "u"}]
    try:
      self._apply(probe, add_generation_prompt=True)
    except Exception:  # jinja2's TemplateError from `raise_exception`.
      return True
    return False

  def conversation(self, messages: Sequence[dict]) -> list[dict]:
    """`messages` as the template takes them (a system turn folded in)."""
    messages = [dict(m) for m in messages]
    if not messages or messages[0]["role"] != "system" or not self.folds_system:
      return messages
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0]["role"] == "user":
      rest[0]["content"] = system + SYSTEM_FOLD_SEPARATOR + rest[0]["content"]
      return rest
    return [{"role": "user", "content": system}] + rest

  def render(self, messages: Sequence[dict], *,
             add_generation_prompt: bool = True,
             answer_prefix: str = "") -> str:
    """The template's text of `messages`, opening the assistant turn.

    Args:
      messages: chat messages ({"role", "content"}).
      add_generation_prompt: end with the assistant turn's header.
      answer_prefix: text prefilled at the start of the assistant turn
        (the judge's "Score: ").
    """
    text = self._apply(self.conversation(messages), add_generation_prompt)
    return text + answer_prefix

  def encode(self, messages: Sequence[dict], *,
             add_generation_prompt: bool = True,
             answer_prefix: str = "") -> list[int]:
    """Token ids of `render(...)`; the template's own BOS, none added."""
    text = self.render(messages, add_generation_prompt=add_generation_prompt,
                       answer_prefix=answer_prefix)
    return self.tokenizer.encode(text, add_special_tokens=False)


def encode_text(tokenizer, text: str) -> list[int]:
  """Raw-text token ids as lm-evaluation-harness encodes them by default.

  The tokenizer's own special tokens are added (BOS for Gemma and Llama 3),
  except a BOS that `text` already starts with.
  """
  bos = getattr(tokenizer, "bos_token", None)
  if bos and text.startswith(bos):
    return tokenizer.encode(text, add_special_tokens=False)
  return tokenizer.encode(text, add_special_tokens=True)
