"""Tokenizers with the transformers interface, from GGUF metadata or HF files.

transformers can build a tokenizer from a GGUF file itself, but that path
imports torch; the JAX code must not need torch at run time. So
`tokenizer_from_gguf_metadata` rebuilds the same `tokenizers.Tokenizer` that
transformers' GGUF converter builds (for the byte-level BPE vocabularies of
Llama-type, Qwen and SmolLM files) and wraps it in `PreTrainedTokenizerFast`.
Token ids, special tokens, BOS handling and the chat template are those of
`AutoTokenizer.from_pretrained(dir, gguf_file=name)`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from hmx_jax.errors import UserError

# llama.cpp's token types (`tokenizer.ggml.token_type`).
_CONTROL = 3
_USER_DEFINED = 4

# Regexes that replace GPT-2's when a vocabulary's merges were learned with
# another split (`tokenizer.ggml.pre`), copied from transformers' GGUF
# converter. Any other pre-tokenizer name keeps GPT-2's split, as there.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}"
    r"\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}"
    r"\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}"
    r"\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}"
    r"\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll"
    r"|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}"
    r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?"
    r"[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
         "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"),
        _LLAMA3_SPLIT),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(
        ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"),
        _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    **dict.fromkeys(
        ("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"),
        _GPT4O_SPLIT),
}

# GGUF tokenizer keys -> the names transformers' converters take them under.
_CONVERTER_KEYS = {
    "tokenizer.ggml.model": "tokenizer_type",
    "tokenizer.ggml.pre": "pre_tokenizer_type",
    "tokenizer.ggml.tokens": "tokens",
    "tokenizer.ggml.scores": "scores",
    "tokenizer.ggml.token_type": "token_type",
    "tokenizer.ggml.merges": "merges",
    "tokenizer.ggml.precompiled_charsmap": "precompiled_charsmap",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
    "tokenizer.ggml.add_space_prefix": "add_prefix_space",
}


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> printable character table (`bytes_to_unicode`)."""
  printable = (list(range(ord("!"), ord("~") + 1))
               + list(range(ord("\u00a1"), ord("\u00ac") + 1))
               + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
  table = {b: chr(b) for b in printable}
  shifted = 0
  for b in range(256):
    if b not in table:
      table[b] = chr(256 + shifted)
      shifted += 1
  return table


def _byte_level_backend(metadata: dict[str, Any]):
  """The `tokenizers.Tokenizer` transformers builds for a `gpt2` GGUF vocab.

  Mirrors `byte_level_tokenizer`, `add_gguf_special_tokens` and
  `set_split_regex` of transformers' GGUF tokenizer mapping.
  """
  from tokenizers import (AddedToken, Regex, Tokenizer, decoders,
                          pre_tokenizers)
  from tokenizers.models import BPE

  tokens = metadata["tokenizer.ggml.tokens"]
  token_types = metadata.get("tokenizer.ggml.token_type") or ()
  spelling = _byte_alphabet()
  alphabet = set(spelling.values())
  # A token written outside the byte alphabet (llama.cpp sometimes stores
  # added tokens as plain text) is respelled byte by byte, as the BPE model
  # looks tokens up.
  vocab = {
      token if set(token) <= alphabet
      else "".join(spelling[b] for b in token.encode("utf-8")): index
      for index, token in enumerate(tokens)}
  merges = [tuple(merge.split(" "))
            for merge in metadata.get("tokenizer.ggml.merges") or ()]
  backend = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None,
                          continuing_subword_prefix="", end_of_word_suffix="",
                          fuse_unk=False))
  # transformers ignores `tokenizer.ggml.add_space_prefix` for byte-level
  # vocabularies, and so does llama.cpp.
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()

  # Control tokens must match whole, or `<|im_start|>` is cut into pieces. A
  # control token outside the byte alphabet is a llama.cpp mislabel that
  # transformers skips, since adding it would grow the vocabulary.
  control = [AddedToken(token, normalized=False, special=True)
             for token, kind in zip(tokens, token_types)
             if kind == _CONTROL and set(token) <= alphabet]
  if control:
    backend.add_special_tokens(control)
  user_defined = [AddedToken(token, normalized=False, special=False)
                  for token, kind in zip(tokens, token_types)
                  if kind == _USER_DEFINED and token in vocab]
  if user_defined:
    backend.add_tokens(user_defined)

  split = _PRE_TOKENIZER_SPLITS.get(metadata.get("tokenizer.ggml.pre"))
  if split is not None:
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  return backend


def _converted_backend(metadata: dict[str, Any]):
  """transformers' own converter, for sentencepiece-style GGUF vocabularies.

  These (Gemma, Llama 2, T5) need transformers' sentencepiece tokenizer
  classes; the converter module itself does not import torch.
  """
  try:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        convert_gguf_tokenizer)
  except ImportError:
    try:  # transformers 4.x
      from transformers.integrations.ggml import convert_gguf_tokenizer
    except ImportError:
      convert_gguf_tokenizer = None
  tokenizer_type = metadata.get("tokenizer.ggml.model")
  if convert_gguf_tokenizer is None:
    raise UserError(f"GGUF tokenizer model {tokenizer_type!r} needs a "
                    "transformers with GGUF support")
  tokenizer_dict = {name: metadata[key] for key, name in _CONVERTER_KEYS.items()
                    if key in metadata}
  try:
    backend, extra_kwargs = convert_gguf_tokenizer(
        metadata.get("general.architecture"), tokenizer_dict)
  except (ValueError, KeyError, NotImplementedError) as e:
    raise UserError(f"GGUF tokenizer model {tokenizer_type!r} is not "
                    f"supported ({e})") from None
  return backend, extra_kwargs


def tokenizer_from_gguf_metadata(metadata: dict[str, Any]):
  """A `PreTrainedTokenizerFast` from a GGUF file's tokenizer metadata.

  Args:
    metadata: the third value of `gguf_io.read_gguf` (or
      `gguf_io.read_gguf_metadata`): `tokenizer.*` fields as GGUF names them.

  Returns:
    a `transformers.PreTrainedTokenizerFast` with the file's special tokens
    and chat template, encoding exactly as transformers' GGUF tokenizer.

  Raises:
    UserError: the metadata has no vocabulary, or a tokenizer model that
      transformers cannot convert.
  """
  from tokenizers import processors
  from transformers import PreTrainedTokenizerFast

  tokens = metadata.get("tokenizer.ggml.tokens")
  if not tokens:
    raise UserError("GGUF metadata has no tokenizer vocabulary "
                    "(tokenizer.ggml.tokens)")
  tokenizer_type = metadata.get("tokenizer.ggml.model")
  extra_kwargs = {}
  if tokenizer_type == "gpt2":
    backend = _byte_level_backend(metadata)
  else:
    backend, extra_kwargs = _converted_backend(metadata)

  def special(key):
    index = metadata.get(f"tokenizer.ggml.{key}")
    return tokens[index] if index is not None and index < len(tokens) else None

  bos, eos = special("bos_token_id"), special("eos_token_id")
  bos_id = metadata.get("tokenizer.ggml.bos_token_id")
  eos_id = metadata.get("tokenizer.ggml.eos_token_id")
  # llama.cpp adds BOS to sentencepiece vocabularies unless told otherwise,
  # and to byte-level ones only when told.
  add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token",
                              tokenizer_type == "llama")) and bos is not None
  add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token",
                              False)) and eos is not None
  # Set here, not only through the kwargs below, because transformers 4.x's
  # PreTrainedTokenizerFast ignores `add_bos_token`.
  single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
  pair = " ".join([single] + [f"{bos}:1"] * add_bos + ["$B:1"]
                  + [f"{eos}:1"] * add_eos)
  backend.post_processor = processors.TemplateProcessing(
      single=single, pair=pair,
      special_tokens=[(bos, bos_id)] * add_bos + [(eos, eos_id)] * add_eos)
  kwargs = dict(
      bos_token=bos, eos_token=eos, unk_token=special("unknown_token_id"),
      pad_token=special("padding_token_id"), add_bos_token=add_bos,
      add_eos_token=add_eos, clean_up_tokenization_spaces=False)
  chat_template = metadata.get("tokenizer.chat_template")
  if chat_template:
    kwargs["chat_template"] = chat_template
  kwargs.update(extra_kwargs)
  return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def tokenizer_from_hf_dir(path: str):
  """`AutoTokenizer.from_pretrained(path)` from local files only.

  Raises:
    UserError: `path` is not a directory or holds no loadable tokenizer.
  """
  from transformers import AutoTokenizer
  if not os.path.isdir(path):
    raise UserError(f"{path}: tokenizer directory not found")
  try:
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
  except (OSError, ValueError) as e:
    # transformers' messages span several lines; UserError is one.
    reason = " ".join(str(e).split())
    if len(reason) > 200:
      reason = reason[:200] + "..."
    raise UserError(f"{path}: cannot load a tokenizer ({reason})") from None
