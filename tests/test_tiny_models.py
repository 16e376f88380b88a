"""The tiny random models `tiny-qwen3`, `tiny-gemma2`, `tiny-llama3`.

Their tokenizers are checked against the published special tokens, settings
and chat templates written down in `hmx_jax/models/templates/SOURCES.md`, and
against prompts written out by hand from the upstream templates.
"""

import hashlib
import pathlib
import re

import jax
import jinja2
import numpy as np
import pytest
import transformers

from hmx_jax import models, sampling, sharding
from hmx_jax.errors import UserError

TEMPLATES = (pathlib.Path(__file__).resolve().parents[1] / "hmx_jax"
             / "models" / "templates")
# Each tiny spec: its template file and the preset of the published model.
TINY = {
    "tiny-qwen3": ("qwen3.jinja", "qwen3-0.6b", "qwen3"),
    "tiny-gemma2": ("gemma2.jinja", "gemma-2-2b-it", "gemma2"),
    "tiny-llama3": ("llama3p2.jinja", "llama-3.2-3b-instruct", "llama"),
}
DATE = "26 Jul 2024"
SYSTEM = {"role": "system", "content": "You are kind."}
USER = {"role": "user", "content": "How do you feel?"}
# The prompts the upstream templates render for [SYSTEM, USER] (Gemma 2:
# [USER]), opening the assistant turn, with enable_thinking=False and
# date_string=DATE; and the special tokens in them, in order.
PROMPTS = {
    "tiny-qwen3": (
        "<|im_start|>system\nYou are kind.<|im_end|>\n"
        "<|im_start|>user\nHow do you feel?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n",
        ["<|im_start|>", "<|im_end|>", "<|im_start|>", "<|im_end|>",
         "<|im_start|>", "<think>", "</think>"]),
    "tiny-gemma2": (
        "<bos><start_of_turn>user\nHow do you feel?<end_of_turn>\n"
        "<start_of_turn>model\n",
        ["<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_turn>"]),
    "tiny-llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are kind.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "How do you feel?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
         "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
         "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]),
}


def parse_sources() -> dict:
  """SOURCES.md: per template file its checksum, tokens and settings."""
  sections, current = {}, None
  for line in (TEMPLATES / "SOURCES.md").read_text().splitlines():
    if m := re.match(r"^## `([\w.]+\.jinja)`", line):
      current = sections[m.group(1)] = {"tokens": {}, "settings": {}}
    elif current is None:
      continue
    elif m := re.match(r"^- SHA-256: `([0-9a-f]{64})`$", line):
      current["sha256"] = m.group(1)
    elif m := re.match(r"^- (\d+) `([^`]+)` (special|not special)$", line):
      current["tokens"][int(m.group(1))] = (m.group(2),
                                            m.group(3) == "special")
    elif m := re.match(r"^- `(\w+)`: (.*)$", line):
      current["settings"][m.group(1)] = m.group(2)
  return sections


SOURCES = parse_sources()


def source_token(setting: str):
  """A token setting's value: the token, or None for "none"."""
  if setting == "none":
    return None
  return re.fullmatch(r"`([^`]+)`", setting).group(1)


def source_ids(setting: str) -> tuple[int, ...]:
  """The ids of an id setting such as "151645, 151643 (generation_...)"."""
  return tuple(int(i) for i in setting.split("(")[0].split(","))


@pytest.fixture(scope="module")
def tiny_models():
  return {name: models.load_model(name) for name in TINY}


def test_sources_cover_every_template_file():
  files = sorted(p.name for p in TEMPLATES.glob("*.jinja"))
  assert files == sorted(SOURCES) == sorted(t for t, _, _ in TINY.values())
  for name, section in SOURCES.items():
    digest = hashlib.sha256((TEMPLATES / name).read_bytes()).hexdigest()
    assert digest == section["sha256"], name
    assert section["tokens"] and len(section["settings"]) == 7, name


@pytest.mark.parametrize("name", sorted(TINY))
def test_tokenizer_has_the_published_special_tokens(name, tiny_models):
  template, preset, family = TINY[name]
  source = SOURCES[template]
  config, _, tokenizer = tiny_models[name]
  assert config.family == family
  assert tokenizer.chat_template == (TEMPLATES / template).read_text()
  assert len(tokenizer) == config.vocab_size == 512
  # Every id is a token, so any sampled id decodes.
  assert all(isinstance(t, str) and t for t in
             tokenizer.convert_ids_to_tokens(list(range(512))))

  tiny_ids = []
  for real_id, (token, special) in sorted(source["tokens"].items()):
    ids = tokenizer.encode(token, add_special_tokens=False)
    assert len(ids) == 1, (token, ids)
    assert tokenizer.convert_ids_to_tokens(ids[0]) == token
    assert tokenizer.added_tokens_decoder[ids[0]].special == special, token
    tiny_ids.append(ids[0])
  # The tiny ids keep the real ids' order.
  assert tiny_ids == sorted(tiny_ids)

  settings = source["settings"]
  for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
    assert getattr(tokenizer, key) == source_token(settings[key]), key
  add_bos = settings["add_bos_token"].split()[0] == "true"
  ids = tokenizer.encode("hi")
  plain = tokenizer.encode("hi", add_special_tokens=False)
  assert ids == ([tokenizer.bos_token_id] if add_bos else []) + plain

  # The checkpoint config's ids name the same tokens as the published ones.
  by_id = {real_id: token for real_id, (token, _) in source["tokens"].items()}
  published_bos = source_ids(settings["bos_token_id"])[0]
  published_eos = source_ids(settings["eos_token_id"])
  assert models.PRESETS[preset].bos_token_id == published_bos
  assert models.PRESETS[preset].eos_token_ids == published_eos
  assert (tokenizer.convert_ids_to_tokens(config.bos_token_id)
          == by_id[published_bos])
  assert (tokenizer.convert_ids_to_tokens(list(config.eos_token_ids))
          == [by_id[i] for i in published_eos])


@pytest.mark.parametrize("name", sorted(TINY))
def test_rendered_prompt_has_each_special_token_as_one_id(name, tiny_models):
  _, _, tokenizer = tiny_models[name]
  text, specials = PROMPTS[name]
  messages = [USER] if name == "tiny-gemma2" else [SYSTEM, USER]
  rendered = tokenizer.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=True,
      enable_thinking=False, date_string=DATE)
  assert rendered == text
  ids = tokenizer.encode(rendered, add_special_tokens=False)
  special_ids = set(tokenizer.convert_tokens_to_ids(sorted(set(specials))))
  assert (tokenizer.convert_ids_to_tokens([i for i in ids if i in special_ids])
          == specials)
  # No special token is spelled out of pieces.
  for i in ids:
    piece = tokenizer.decode([i])
    assert i in special_ids or not any(s in piece for s in specials), piece
  assert tokenizer.decode(ids) == text
  via_template = tokenizer.apply_chat_template(
      messages, tokenize=True, add_generation_prompt=True,
      enable_thinking=False, date_string=DATE, return_dict=True)
  assert list(via_template["input_ids"]) == ids


def test_template_conventions_the_chat_format_relies_on(tiny_models):
  qwen = tiny_models["tiny-qwen3"][2]
  # Without enable_thinking, Qwen3's template leaves the thinking to the
  # model: no <think> block in the prompt.
  assert qwen.apply_chat_template([USER], tokenize=False,
                                  add_generation_prompt=True).endswith(
                                      "<|im_start|>assistant\n")
  gemma = tiny_models["tiny-gemma2"][2]
  with pytest.raises(jinja2.TemplateError, match="System role not supported"):
    gemma.apply_chat_template([SYSTEM, USER], tokenize=False)
  llama = tiny_models["tiny-llama3"][2]
  dated = llama.apply_chat_template([USER], tokenize=False,
                                    date_string="01 Jan 2030")
  assert "Today Date: 01 Jan 2030\n" in dated


def random_unicode(rng, length: int) -> str:
  """Text drawn from ASCII, whitespace, Latin, CJK, emoji, combining marks
  and any other code point outside the surrogates."""
  ranges = [(0x20, 0x7e), (0x09, 0x0d), (0xa0, 0x17f), (0x4e00, 0x9fff),
            (0x1f300, 0x1faff), (0x300, 0x36f), (0x0, 0xd7ff),
            (0xe000, 0x10ffff)]
  chars = []
  for _ in range(length):
    low, high = ranges[rng.integers(len(ranges))]
    chars.append(chr(int(rng.integers(low, high + 1))))
  return "".join(chars)


@pytest.mark.parametrize("name", sorted(TINY))
def test_decode_inverts_encode_on_arbitrary_unicode(name, tiny_models):
  _, _, tokenizer = tiny_models[name]
  rng = np.random.default_rng(0)
  texts = [random_unicode(rng, int(rng.integers(0, 40))) for _ in range(300)]
  texts += ["  leading and trailing  ", "tab\tnew\nline\r\n", "",
            "a<|im_end|>b <think> c<eos>d<|eot_id|>",
            "naïve café 東京 👩‍👩‍👧 e\u0301"]
  for text in texts:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text, repr(text)
    with_special = tokenizer.encode(text)
    if "<" not in text:
      assert tokenizer.decode(with_special, skip_special_tokens=True) == text


@pytest.mark.parametrize("name", sorted(TINY))
def test_saved_tokenizer_loads_in_transformers_alike(name, tiny_models,
                                                     tmp_path):
  _, _, tokenizer = tiny_models[name]
  tokenizer.save_pretrained(tmp_path)
  loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
  text, _ = PROMPTS[name]
  for sample in (text, "Plain text, no specials.", "x<|im_start|>y"):
    assert loaded.encode(sample) == tokenizer.encode(sample), sample
  assert loaded.chat_template == tokenizer.chat_template
  assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (
      tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)


@pytest.mark.parametrize("name", sorted(TINY))
def test_load_model_casts_and_places_params(name, tiny_models):
  config, params, _ = tiny_models[name]
  abstract, _ = models.abstract_params(config)
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), params)
          == jax.tree.map(lambda x: (x.shape, x.dtype), abstract))

  bf16_config, bf16, _ = models.load_model(name, dtype="bfloat16")
  assert bf16_config.param_dtype == bf16_config.dtype == "bfloat16"
  assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(bf16))
  np.testing.assert_array_equal(
      np.asarray(bf16["embedding"]),
      np.asarray(params["embedding"]).astype(jax.numpy.bfloat16))

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  _, placed, _ = models.load_model(name, mesh=mesh)
  embed = placed["embedding"]
  assert embed.sharding.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
  assert len(embed.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(embed),
                                np.asarray(params["embedding"]))


@pytest.mark.parametrize("name", sorted(TINY))
def test_generate_runs_on_chat_prompts(name, tiny_models):
  config, params, tokenizer = tiny_models[name]
  text, _ = PROMPTS[name]
  prompt = tokenizer.encode(text, add_special_tokens=False)
  out = sampling.generate(config, params, [prompt, prompt[:7]],
                          max_new_tokens=6, temperature=1.0, seed=0)
  assert out.tokens.shape == (2, 6)
  assert set(out.finish_reasons) <= {"length", "stop"}
  mask = np.asarray(out.mask, bool)
  assert mask[:, 0].all()
  assert np.isfinite(np.asarray(out.logprobs)[mask]).all()
  assert (np.asarray(out.tokens)[mask] < config.vocab_size).all()
  assert all(isinstance(tokenizer.decode(row), str) for row in out.tokens)


def test_unknown_tiny_spec_names_the_known_ones():
  with pytest.raises(UserError) as e:
    models.load_model("tiny-mistral")
  for name in TINY:
    assert name in str(e.value)
