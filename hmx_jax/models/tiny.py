"""Tiny random models of the paper's families, loadable as model specs.

`load_model("tiny-qwen3")` (and `tiny-gemma2`, `tiny-llama3`) returns a
two-layer decoder of the family with random parameters and a tokenizer that
keeps what a run depends on: the family's real special tokens, its BOS
behaviour, bos/pad/eos settings and its published chat template
(`templates/`, sources in `templates/SOURCES.md`). Text around the special
tokens is byte-level BPE over the 256 byte symbols and a few merges (Gemma's
real vocabulary is SentencePiece), so ordinary token ids differ from the
real model's; every id of the 512-token vocabulary is a token. They let the smoke presets of the model configs train
and evaluate each family on a CPU.

The tokenizer is assembled as from a GGUF file's tokenizer metadata and built
by `tokenizer.tokenizer_from_gguf_metadata`, the torch-free path the embedded
model uses: a `transformers.PreTrainedTokenizerFast`.

Adding a family: one `TinyFamily` entry in `SPECS`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from typing import Any

import jax

from hmx_jax.models import decoder
from hmx_jax.models import tokenizer as tokenizer_lib
from hmx_jax.models.config import ModelConfig, RopeScaling, family_config

VOCAB_SIZE = 512
SEED = 0
# Sizes shared by every tiny model; each family adds its own switches.
_SIZES = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
              num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)
# llama.cpp's token type of an ordinary token (`tokenizer.ggml.token_type`).
_NORMAL = 1
# Merges fill the ids the bytes and special tokens leave: a space before
# each letter, then letter pairs, letters taken in English frequency order.
_LETTERS = "etaoinshrdlucmfwypvbgkjqxz"


@dataclasses.dataclass(frozen=True)
class TinyFamily:
  """What a tiny model keeps of a family's published checkpoint.

  Attributes:
    family: the `ModelConfig` family.
    template: the chat template's file name in `templates/`.
    added_tokens: the tokenizer's added tokens in the real id order, each
      (content, special); special=False where the real tokenizer adds the
      token as a plain added token (Qwen3's <think>, <tool_call>, ...).
    first_added_id: the tiny id of the first added token (they are
      contiguous); bytes and merges take the other ids in order.
    bos_token, eos_token, pad_token, unk_token: as the real tokenizer sets
      them (None: not set).
    add_bos: whether encoding adds `bos_token` (add_special_tokens=True).
    config_bos, config_eos: the tokens of the checkpoint config's
      bos_token_id and eos_token_id (every id that ends a generation).
    split: the real tokenizer's pre-tokenizer split, by llama.cpp's name
      (`tokenizer.ggml.pre`), or None for GPT-2's.
    architecture: `ModelConfig` fields of the published model's config.json
      that the tiny one copies.
  """
  family: str
  template: str
  added_tokens: tuple[tuple[str, bool], ...]
  first_added_id: int
  bos_token: str | None
  eos_token: str
  pad_token: str | None
  unk_token: str | None
  add_bos: bool
  config_bos: str
  config_eos: tuple[str, ...]
  split: str | None
  architecture: dict[str, Any]


_QWEN3_ADDED = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
    ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True),
    ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False))
_LLAMA3_ADDED = tuple((token, True) for token in (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"))
# Gemma's <pad>, <eos>, <bos>, <unk> keep their real ids 0-3; the turn
# markers (106, 107 in the real vocabulary) follow them.
_GEMMA2_ADDED = tuple((token, True) for token in (
    "<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"))

SPECS: dict[str, TinyFamily] = {
    # Qwen/Qwen3-0.6B: ids 151643-151668 after the regular vocabulary.
    "tiny-qwen3": TinyFamily(
        family="qwen3", template="qwen3.jinja", added_tokens=_QWEN3_ADDED,
        first_added_id=VOCAB_SIZE - len(_QWEN3_ADDED), bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        add_bos=False, config_bos="<|endoftext|>",
        config_eos=("<|im_end|>", "<|endoftext|>"), split="qwen2",
        architecture=dict(rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                          max_position_embeddings=40960,
                          tie_embeddings=True)),
    # google/gemma-2-2b-it.
    "tiny-gemma2": TinyFamily(
        family="gemma2", template="gemma2.jinja", added_tokens=_GEMMA2_ADDED,
        first_added_id=0, bos_token="<bos>", eos_token="<eos>",
        pad_token="<pad>", unk_token="<unk>", add_bos=True,
        config_bos="<bos>", config_eos=("<eos>", "<end_of_turn>"),
        split=None,
        architecture=dict(rms_norm_eps=1e-6, rope_theta=10_000.0,
                          max_position_embeddings=8192, tie_embeddings=True,
                          attn_logit_softcap=50.0, final_logit_softcap=30.0,
                          query_pre_attn_scalar=_SIZES["head_dim"],
                          sliding_window=64)),
    # meta-llama/Llama-3.2-3B-Instruct: ids 128000-128010 after the regular
    # vocabulary (the real one reserves up to 128255).
    "tiny-llama3": TinyFamily(
        family="llama", template="llama3p2.jinja", added_tokens=_LLAMA3_ADDED,
        first_added_id=VOCAB_SIZE - len(_LLAMA3_ADDED),
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token=None,
        unk_token=None, add_bos=True, config_bos="<|begin_of_text|>",
        config_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        split="llama-bpe",
        architecture=dict(
            rms_norm_eps=1e-5, rope_theta=500_000.0,
            rope_scaling=RopeScaling(factor=32.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0,
                                     original_max_position_embeddings=8192),
            max_position_embeddings=131072, tie_embeddings=True)),
}


def template_text(name: str) -> str:
  """The text of `templates/<name>`, exactly as published."""
  files = importlib.resources.files("hmx_jax.models") / "templates"
  return (files / name).read_text(encoding="utf-8")


def _vocabulary(spec: TinyFamily) -> tuple[list[str], list[int], list[str]]:
  """(tokens by id, llama.cpp token types, merges) of `spec`'s tokenizer."""
  spelling = tokenizer_lib._byte_alphabet()
  space = spelling[ord(" ")]
  pairs = ([(space, c) for c in _LETTERS]
           + [(a, b) for a in _LETTERS for b in _LETTERS])
  merges = pairs[:VOCAB_SIZE - 256 - len(spec.added_tokens)]
  regular = [spelling[b] for b in range(256)] + [a + b for a, b in merges]
  first = spec.first_added_id
  tokens = regular[:first] + [t for t, _ in spec.added_tokens] + regular[first:]
  types = ([_NORMAL] * first
           + [tokenizer_lib._CONTROL if special
              else tokenizer_lib._USER_DEFINED
              for _, special in spec.added_tokens]
           + [_NORMAL] * (len(regular) - first))
  return tokens, types, [f"{a} {b}" for a, b in merges]


def build_tokenizer(name: str):
  """The tiny tokenizer of spec `name` (a `PreTrainedTokenizerFast`)."""
  spec = SPECS[name]
  tokens, types, merges = _vocabulary(spec)
  metadata = {
      "tokenizer.ggml.model": "gpt2",
      "tokenizer.ggml.tokens": tokens,
      "tokenizer.ggml.token_type": types,
      "tokenizer.ggml.merges": merges,
      "tokenizer.ggml.add_bos_token": spec.add_bos,
      "tokenizer.chat_template": template_text(spec.template),
  }
  if spec.split is not None:
    metadata["tokenizer.ggml.pre"] = spec.split
  for key, token in (("bos_token_id", spec.bos_token),
                     ("eos_token_id", spec.eos_token),
                     ("padding_token_id", spec.pad_token),
                     ("unknown_token_id", spec.unk_token)):
    if token is not None:
      metadata[f"tokenizer.ggml.{key}"] = tokens.index(token)
  return tokenizer_lib.tokenizer_from_gguf_metadata(metadata)


@functools.lru_cache(maxsize=None)
def _random_params(config: ModelConfig):
  # Compiling the init takes seconds; tests load each tiny model many times.
  return jax.device_get(decoder.init_params(config, SEED))


def build(name: str):
  """(config, float32 host params, tokenizer) of tiny spec `name`.

  The parameters are `decoder.init_params(config, SEED)`, computed once per
  process and shared between calls: read them, do not write to them. The
  tokenizer is new on every call.
  """
  spec = SPECS[name]
  tokenizer = build_tokenizer(name)
  ids = tokenizer.convert_tokens_to_ids
  config: ModelConfig = family_config(
      spec.family, **_SIZES, **spec.architecture,
      bos_token_id=ids(spec.config_bos),
      eos_token_ids=tuple(ids(t) for t in spec.config_eos))
  return config, _random_params(config), tokenizer
