"""Decoder parity with transformers, export round trip, sharding, presets."""

import numpy as np
import pytest

import jax
from hmx_jax import models, sharding

from helpers import (FAMILIES, hf_logits, max_diff_on_real_tokens,
                     random_batch, tiny_hf_model)


@pytest.fixture(scope="module", params=FAMILIES)
def saved_family(request, tmp_path_factory):
  family = request.param
  model = tiny_hf_model(family)
  directory = tmp_path_factory.mktemp(family)
  model.save_pretrained(directory)
  return family, model, str(directory)


def test_logits_match_transformers(saved_family):
  family, hf_model, directory = saved_family
  config, params, _ = models.load_model(directory)
  assert config.family == family
  tokens, mask = random_batch(4, 12, config.vocab_size)
  ours = np.asarray(models.forward(config, params, tokens, mask))
  theirs = hf_logits(hf_model, tokens, mask)
  assert ours.shape == theirs.shape and ours.dtype == np.float32
  assert max_diff_on_real_tokens(ours, theirs, mask) <= 1e-4
  # Logits of size O(1): the comparison is not trivially passed.
  assert np.abs(theirs).mean() > 0.1


def test_export_reloads_in_transformers(saved_family, tmp_path):
  import transformers
  _, _, directory = saved_family
  config, params, _ = models.load_model(directory)
  models.export_hf(config, params, None, str(tmp_path))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), dtype="float32",
      **({"attn_implementation": "eager"} if config.family == "gemma2"
         else {})).eval()
  tokens, mask = random_batch(3, 10, config.vocab_size, seed=1)
  ours = np.asarray(models.forward(config, params, tokens, mask))
  assert max_diff_on_real_tokens(ours, hf_logits(reloaded, tokens, mask),
                                 mask) <= 1e-4


def test_sharded_forward_equals_unsharded(saved_family):
  family, _, directory = saved_family
  assert len(jax.devices()) == 8
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  config, params, _ = models.load_model(directory)
  _, sharded, _ = models.load_model(directory, mesh=mesh)
  q = sharded["layers"]["attn"]["q"]
  # Each device holds a quarter of q: fsdp over embed, tensor over heads.
  assert q.sharding.shard_shape(q.shape) == (
      q.shape[0], q.shape[1] // 2, q.shape[2] // 2, q.shape[3])
  tokens, mask = random_batch(4, 12, config.vocab_size, seed=2)
  expected = np.asarray(models.forward(config, params, tokens, mask))
  with sharding.use_mesh(mesh):
    batch_sharding = sharding.batch_sharding(mesh)
    got = models.forward(config, sharded,
                         jax.device_put(tokens, batch_sharding),
                         jax.device_put(mask, batch_sharding))
  assert max_diff_on_real_tokens(np.asarray(got), expected, mask) <= 1e-5


# Published parameter counts: exact where the model card or hub gives one.
PUBLISHED_EXACT = {
    "smollm2-135m-instruct": 134_515_008,
    "gemma-2-2b-it": 2_614_341_888,
    "llama-3.2-3b-instruct": 3_212_749_824,
}
# The Qwen3 cards give rounded (total, non-embedding) counts only; ours must
# round to them at the printed precision, and equal transformers' count for
# the same architecture exactly (`test_preset_counts_match_transformers`).
PUBLISHED_ROUNDED = {
    "qwen3-0.6b": ((0.6e9, 0.05e9), (0.44e9, 0.005e9)),
    "qwen3-4b": ((4.0e9, 0.05e9), (3.6e9, 0.05e9)),
    "qwen3-8b": ((8.2e9, 0.05e9), (6.95e9, 0.005e9)),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_EXACT))
def test_preset_parameter_counts(name):
  abstract, _ = models.abstract_params(models.PRESETS[name])
  count = models.count_params(abstract)
  assert abs(count / PUBLISHED_EXACT[name] - 1) <= 0.005, count


@pytest.mark.parametrize("name", sorted(PUBLISHED_ROUNDED))
def test_qwen3_parameter_counts_round_to_card(name):
  config = models.PRESETS[name]
  count = models.count_params(models.abstract_params(config)[0])
  embedding = config.vocab_size * config.hidden_size
  non_embedding = count - embedding * (1 if config.tie_embeddings else 2)
  (total, total_unit), (body, body_unit) = PUBLISHED_ROUNDED[name]
  assert abs(count - total) <= total_unit, count
  assert abs(non_embedding - body) <= body_unit, non_embedding


# The presets' architectures as their hub config.json files give them,
# written out here (independently of `models.to_hf_config`).
HF_CONFIGS = {
    "smollm2-135m-instruct": dict(
        model_type="llama", vocab_size=49152, hidden_size=576,
        intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, tie_word_embeddings=True),
    "qwen3-0.6b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=1024,
        intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-4b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=2560,
        intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=4096,
        intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "gemma-2-2b-it": dict(
        model_type="gemma2", vocab_size=256000, hidden_size=2304,
        intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, tie_word_embeddings=True),
    "llama-3.2-3b-instruct": dict(
        model_type="llama", vocab_size=128256, hidden_size=3072,
        intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
}


def test_preset_counts_match_transformers():
  """Our param counts equal transformers' for the same architectures."""
  torch = pytest.importorskip("torch")
  import transformers
  assert sorted(HF_CONFIGS) == sorted(models.PRESETS)
  for name, hf in HF_CONFIGS.items():
    hf_config = transformers.AutoConfig.for_model(**hf)
    with torch.device("meta"):
      hf_model = transformers.AutoModelForCausalLM.from_config(hf_config)
    ours = models.count_params(models.abstract_params(models.PRESETS[name])[0])
    assert ours == hf_model.num_parameters(), name
