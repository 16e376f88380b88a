"""Multi-turn chat on top of the sampler, with streamed output."""

from __future__ import annotations

from typing import TextIO

import numpy as np

from hmx_jax import sampling
from hmx_jax.models.chat_format import ChatFormat
from hmx_jax.models.config import ModelConfig


def stop_ids_for(config: ModelConfig, tokenizer) -> list[int]:
  """End-of-turn ids: the checkpoint's EOS ids and the tokenizer's."""
  ids = set(config.eos_token_ids)
  if tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  for token in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
    token_id = tokenizer.convert_tokens_to_ids(token)
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
      ids.add(token_id)
  return sorted(ids)


class _StreamPrinter:
  """Decodes the growing completion and writes only the new text."""

  def __init__(self, tokenizer, out: TextIO):
    self.tokenizer, self.out = tokenizer, out
    self.tokens: list[int] = []
    self.printed = ""

  def __call__(self, step, tokens, done):
    del step
    if bool(np.asarray(done)[0]):
      return
    self.tokens.append(int(np.asarray(tokens)[0]))
    text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
    # An incomplete UTF-8 sequence decodes to U+FFFD: wait for the rest.
    if text.endswith("\ufffd"):
      return
    self.out.write(text[len(self.printed):])
    self.out.flush()
    self.printed = text


class ChatSession:
  """Keeps the conversation and answers each user message."""

  def __init__(self, config, params, tokenizer, *, system=None,
               max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0,
               seed=0, chat: ChatFormat | None = None):
    self.config, self.params, self.tokenizer = config, params, tokenizer
    self.chat = chat or ChatFormat(tokenizer)
    self.system = system
    self.sampling = dict(max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, top_p=top_p)
    self.seed = seed
    self.stop_ids = stop_ids_for(config, tokenizer)
    self.reset()

  def reset(self):
    self.messages = ([{"role": "system", "content": self.system}]
                     if self.system else [])

  def send(self, text: str, stream: TextIO | None = None) -> str:
    """Adds a user turn, generates the answer (streamed) and returns it."""
    self.messages.append({"role": "user", "content": text})
    prompt = self.chat.encode(self.messages)
    printer = _StreamPrinter(self.tokenizer, stream) if stream else None
    out = sampling.generate(self.config, self.params, [prompt],
                            stop_ids=self.stop_ids, seed=self.seed,
                            on_tokens=printer, **self.sampling)
    self.seed += 1
    text = self.tokenizer.decode(out.completions()[0],
                                 skip_special_tokens=True)
    if stream:
      # Whatever the stream held back (a partial UTF-8 character at the end).
      if text.startswith(printer.printed):
        stream.write(text[len(printer.printed):])
      stream.write("\n")
      stream.flush()
    answer = text.strip()
    self.messages.append({"role": "assistant", "content": answer})
    return answer
