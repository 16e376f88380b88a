"""GGUF reading and the torch-free tokenizer against transformers' GGUF path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hmx_jax.errors import UserError
from hmx_jax.models import gguf_io, tokenizer as tokenizer_lib

TEXTS = [
    "Hello, world!",
    "Café naïve résumé — déjà vu; Ångström, Straße, Œuvre",
    "Emoji: 😀🎉👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "def f(x):\n\tif x:\n\t\treturn x  # done\n    else:\n        pass\n",
    "中文分词测试，日本語のテキスト、한국어 문장입니다.",
    "   leading spaces, and trailing   ",
    "line1\n\n\nline2\r\n\r\nline3\n",
    "3.14159 2,718 1e-10 0x1F 1234567890 -42 100%",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    " ",
    "\n",
    "",
    "a",
    "Mixed: naïve 🤖 code `x += 1` 数字 42!!! ??? ...",
    "I'm sure they'll say we've CAN'T, SHOUTING ALL-CAPS",
    "https://example.com/path?q=1&r=two#frag",
    "tabs\tbetween\twords\t\t\tand\u00a0nbsp  \t \n  ",
    "<|im_start|> half <|im_start <repo_name>x</repo_name>",
    "zero\u200bwidth and combining e\u0301 vs é",
]

CONVERSATIONS = [
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "How do you feel today?"},
     {"role": "assistant", "content": "Fine, thanks."},
     {"role": "user", "content": "Say it in French, with an émoji 🙂."}],
    [{"role": "user", "content": "Write a haiku\nabout rain."},
     {"role": "assistant", "content": "Drops on\tthe window"},
     {"role": "user", "content": "Another one."}],
]


@pytest.fixture(scope="module")
def embedded():
  path = gguf_io.embedded_gguf_path()
  return (path,) + gguf_io.read_gguf(path)


@pytest.fixture(scope="module")
def hf_gguf(embedded):
  """transformers' config dict, parameter names and tensors from the GGUF.

  `AutoModelForCausalLM.from_pretrained(gguf_file=...)` needs accelerate in
  transformers 5; for GGUF it wraps `load_gguf_checkpoint`, called here
  directly. The model only names the tensors (transformers maps GGUF names
  through its parameter names), so it is built on the meta device from the
  layer count alone; the sizes are checked against transformers' own config.
  """
  torch = pytest.importorskip("torch")
  import transformers
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  path, config, _, _ = embedded
  with torch.device("meta"):
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=config["num_hidden_layers"],
        tie_word_embeddings=True))
  parsed = load_gguf_checkpoint(path, return_tensors=True,
                                model_to_load=model, torch_dtype=torch.float32)
  return parsed["config"], set(model.state_dict()), parsed["tensors"]


@pytest.fixture(scope="module")
def tokenizers(embedded):
  import transformers
  path, _, _, metadata = embedded
  ours = tokenizer_lib.tokenizer_from_gguf_metadata(metadata)
  theirs = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path))
  return ours, theirs


@pytest.mark.slow  # transformers reads the embedded GGUF: 30 s
def test_embedded_config(embedded, hf_gguf):
  _, config, _, _ = embedded
  expected = dict(
      architectures=["LlamaForCausalLM"], model_type="llama",
      num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
      num_attention_heads=9, num_key_value_heads=3, head_dim=64,
      vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5,
      rope_theta=100_000.0, max_position_embeddings=8192, bos_token_id=1,
      eos_token_id=2)
  assert {k: config[k] for k in expected} == expected
  assert "rope_scaling" not in config
  hf_config = hf_gguf[0]
  for key in expected:
    if key != "architectures":
      assert hf_config[key] == pytest.approx(config[key]), key


@pytest.mark.slow  # transformers reads the embedded GGUF: 30 s
def test_embedded_tensors_equal_transformers(embedded, hf_gguf):
  _, config, state_dict, _ = embedded
  _, hf_names, hf_tensors = hf_gguf
  assert set(state_dict) == set(hf_tensors)
  # The only parameter not in the file is the tied output projection.
  assert hf_names - set(state_dict) == {"lm_head.weight"}
  assert len(state_dict) == 3 + 9 * config["num_hidden_layers"] - 1
  assert state_dict["model.embed_tokens.weight"].shape == (49152, 576)
  assert state_dict["model.layers.0.self_attn.q_proj.weight"].shape == (
      576, 576)
  assert state_dict["model.layers.0.self_attn.k_proj.weight"].shape == (
      192, 576)
  assert state_dict["model.layers.0.mlp.down_proj.weight"].shape == (
      576, 1536)
  for name, array in state_dict.items():
    expected = hf_tensors[name].numpy()
    assert array.dtype == np.float32, name
    assert array.shape == expected.shape, name
    np.testing.assert_allclose(array, expected, rtol=0, atol=1e-6,
                               err_msg=name)


@pytest.mark.slow  # transformers reads the embedded GGUF: 30 s
def test_token_ids_and_decode_match_transformers(tokenizers):
  ours, theirs = tokenizers
  assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id,
          ours.unk_token_id) == (theirs.bos_token_id, theirs.eos_token_id,
                                 theirs.pad_token_id, theirs.unk_token_id)
  assert len(ours) == len(theirs) == 49152
  for text in TEXTS:
    ids = ours.encode(text)
    assert ids == theirs.encode(text), text
    assert ours(text)["input_ids"] == ids, text
    assert ours.decode(ids) == theirs.decode(ids) == text, text
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
        ids, skip_special_tokens=True), text
  # SmolLM2 adds no BOS; special-token text maps to its single id.
  assert ours.encode("<|im_start|>") == [ours.bos_token_id]


def _ids(encoded):
  return encoded["input_ids"] if hasattr(encoded, "keys") else encoded


@pytest.mark.slow  # transformers reads the embedded GGUF: 30 s
def test_chat_template_matches_transformers(tokenizers):
  ours, theirs = tokenizers
  for messages in CONVERSATIONS:
    text = ours.apply_chat_template(messages, tokenize=False,
                                    add_generation_prompt=True)
    assert text == theirs.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(
        text, add_special_tokens=False)
    assert _ids(ours.apply_chat_template(
        messages, add_generation_prompt=True)) == _ids(
            theirs.apply_chat_template(messages, add_generation_prompt=True))
  # Without a system message the template supplies SmolLM's own.
  assert "named SmolLM" in ours.apply_chat_template(
      CONVERSATIONS[1], tokenize=False)


def test_reading_and_tokenizing_needs_no_torch(tokenizers):
  _, theirs = tokenizers
  text = TEXTS[4] + TEXTS[8] + TEXTS[2]
  script = f"""
import json, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from hmx_jax.models import gguf_io, tokenizer
config, _, metadata = gguf_io.read_gguf(gguf_io.embedded_gguf_path())
tok = tokenizer.tokenizer_from_gguf_metadata(metadata)
print(json.dumps(tok.encode({text!r})))
"""
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == theirs.encode(
      text)


def _write_gguf(path, arch, fields, tensors):
  import gguf
  writer = gguf.GGUFWriter(str(path), arch)
  for key, value in fields.items():
    if isinstance(value, float):
      writer.add_float32(f"{arch}.{key}", value)
    else:
      writer.add_uint32(f"{arch}.{key}", value)
  for name, array in tensors.items():
    writer.add_tensor(name, np.asarray(array, dtype=np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


def _llama_cpp_permute(weight, num_heads):
  """llama.cpp's convert_hf_to_gguf `LlamaModel.permute`."""
  return (weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2,
                         *weight.shape[1:])
          .swapaxes(1, 2).reshape(weight.shape))


def _tiny_tensors(rng, heads, kv_heads, head_dim, hidden=12, ffn=20, vocab=7):
  def normal(*shape):
    return rng.standard_normal(shape).astype(np.float32)

  return {
      "token_embd.weight": normal(vocab, hidden),
      "output_norm.weight": normal(hidden),
      "output.weight": normal(vocab, hidden),
      "blk.0.attn_norm.weight": normal(hidden),
      "blk.0.attn_q.weight": normal(heads * head_dim, hidden),
      "blk.0.attn_k.weight": normal(kv_heads * head_dim, hidden),
      "blk.0.attn_v.weight": normal(kv_heads * head_dim, hidden),
      "blk.0.attn_output.weight": normal(hidden, heads * head_dim),
      "blk.0.ffn_norm.weight": normal(hidden),
      "blk.0.ffn_gate.weight": normal(ffn, hidden),
      "blk.0.ffn_up.weight": normal(ffn, hidden),
      "blk.0.ffn_down.weight": normal(hidden, ffn),
  }


def _sizes(heads, kv_heads, head_dim, hidden=12, ffn=20, vocab=7):
  return {"block_count": 1, "context_length": 64, "embedding_length": hidden,
          "feed_forward_length": ffn, "attention.head_count": heads,
          "attention.head_count_kv": kv_heads, "vocab_size": vocab,
          "rope.dimension_count": head_dim, "rope.freq_base": 500_000.0,
          "attention.layer_norm_rms_epsilon": 1e-5}


def test_llama_permutation_and_llama3_rope(tmp_path):
  from hmx_jax.models import config as config_lib
  rng = np.random.default_rng(0)
  hf = _tiny_tensors(rng, heads=4, kv_heads=2, head_dim=8, hidden=16)
  stored = dict(hf)
  stored["blk.0.attn_q.weight"] = _llama_cpp_permute(hf["blk.0.attn_q.weight"],
                                                     4)
  stored["blk.0.attn_k.weight"] = _llama_cpp_permute(hf["blk.0.attn_k.weight"],
                                                     2)
  stored["rope_freqs.weight"] = gguf_io._llama3_rope_factors(
      500_000.0, 8, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
      original_max_position_embeddings=8192)
  # One of the four frequencies lies between the unscaled and the fully
  # scaled band, so the check covers the smooth part too.
  assert 1.0 < sorted(stored["rope_freqs.weight"])[2] < 32.0
  path = _write_gguf(tmp_path / "llama.gguf", "llama",
                     _sizes(4, 2, 8, hidden=16), stored)
  config, state_dict, _ = gguf_io.read_gguf(path)
  assert config["tie_word_embeddings"] is False
  assert config["rope_scaling"] == {
      "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
  assert config_lib.from_hf_config(config).rope_scaling.factor == 32.0
  np.testing.assert_array_equal(
      state_dict["model.layers.0.self_attn.q_proj.weight"],
      hf["blk.0.attn_q.weight"])
  np.testing.assert_array_equal(
      state_dict["model.layers.0.self_attn.k_proj.weight"],
      hf["blk.0.attn_k.weight"])
  np.testing.assert_array_equal(state_dict["lm_head.weight"],
                                hf["output.weight"])
  assert "rope_freqs.weight" not in state_dict and not any(
      "rope" in name for name in state_dict)


def test_qwen3_and_gemma2_names(tmp_path):
  rng = np.random.default_rng(1)
  # Qwen 3: heads wider than hidden / heads, q/k norms, no permutation.
  tensors = _tiny_tensors(rng, heads=2, kv_heads=1, head_dim=8)
  tensors["blk.0.attn_q_norm.weight"] = rng.standard_normal(8)
  tensors["blk.0.attn_k_norm.weight"] = rng.standard_normal(8)
  fields = {**_sizes(2, 1, 8), "attention.key_length": 8}
  config, state_dict, _ = gguf_io.read_gguf(
      _write_gguf(tmp_path / "qwen3.gguf", "qwen3", fields, tensors))
  assert (config["model_type"], config["head_dim"]) == ("qwen3", 8)
  np.testing.assert_array_equal(
      state_dict["model.layers.0.self_attn.q_proj.weight"],
      tensors["blk.0.attn_q.weight"])
  np.testing.assert_array_equal(
      state_dict["model.layers.0.self_attn.k_norm.weight"],
      tensors["blk.0.attn_k_norm.weight"].astype(np.float32))
  assert "model.layers.0.post_attention_layernorm.weight" in state_dict

  # Gemma 2: four norms a layer, stored by llama.cpp as 1 + w.
  tensors = _tiny_tensors(rng, heads=2, kv_heads=1, head_dim=8)
  del tensors["output.weight"]
  tensors["blk.0.post_attention_norm.weight"] = rng.standard_normal(12)
  tensors["blk.0.post_ffw_norm.weight"] = rng.standard_normal(12)
  config, state_dict, _ = gguf_io.read_gguf(
      _write_gguf(tmp_path / "gemma2.gguf", "gemma2", fields, tensors))
  assert config["tie_word_embeddings"] is True
  assert config["query_pre_attn_scalar"] == 8
  for gguf_name, hf_name in [
      ("blk.0.attn_norm", "input_layernorm"),
      ("blk.0.post_attention_norm", "post_attention_layernorm"),
      ("blk.0.ffn_norm", "pre_feedforward_layernorm"),
      ("blk.0.post_ffw_norm", "post_feedforward_layernorm")]:
    np.testing.assert_allclose(
        state_dict[f"model.layers.0.{hf_name}.weight"],
        tensors[f"{gguf_name}.weight"] - 1, rtol=1e-6)
  np.testing.assert_allclose(state_dict["model.norm.weight"],
                             tensors["output_norm.weight"] - 1, rtol=1e-6)


def test_missing_file_is_a_user_error(tmp_path):
  missing = str(tmp_path / "nowhere.gguf")
  with pytest.raises(UserError, match="nowhere.gguf"):
    gguf_io.read_gguf(missing)
  with pytest.raises(UserError, match="nowhere.gguf"):
    gguf_io.read_gguf_metadata(missing)


def test_unsupported_architecture_is_a_user_error(tmp_path):
  path = _write_gguf(tmp_path / "ssm.gguf", "mamba", {"block_count": 1},
                     {"token_embd.weight": np.zeros((4, 2))})
  with pytest.raises(UserError) as info:
    gguf_io.read_gguf(path)
  assert path in str(info.value) and "mamba" in str(info.value)


def test_not_a_gguf_file_is_a_user_error(tmp_path):
  path = tmp_path / "junk.gguf"
  path.write_bytes(b"not a gguf file at all")
  with pytest.raises(UserError, match="junk.gguf"):
    gguf_io.read_gguf(str(path))

