"""The learner: chunked log-probs, gradient accumulation, memory, precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmx_jax import learner, models, sharding
from hmx_jax.models import decoder
from hmx_jax.models.config import family_config

from helpers import hf_logits, tiny_config, tiny_hf_model, tiny_params


def test_chunked_logps_and_entropy_equal_transformers(tmp_path):
  """Chunks that do not divide N, a temperature, left padding."""
  import torch
  hf = tiny_hf_model("qwen3")
  hf.save_pretrained(tmp_path)
  config, params, _ = models.load_model(str(tmp_path))
  rng = np.random.default_rng(0)
  B, P, N, T = 3, 5, 7, 0.7
  tokens = rng.integers(0, config.vocab_size, size=(B, P + N))
  mask = np.ones((B, P + N), np.int32)
  mask[1, :2] = 0
  mask[2, :4] = 0
  logps, entropy = learner.completion_logps(config, params, tokens, mask, P,
                                            T, chunk=3)
  logits = torch.tensor(hf_logits(hf, tokens, mask), dtype=torch.float64) / T
  logp_all = torch.log_softmax(logits, dim=-1)[:, P - 1:-1]
  want = torch.gather(logp_all, -1, torch.tensor(tokens[:, P:])[..., None])
  want_entropy = -(logp_all.exp() * logp_all).sum(-1)
  np.testing.assert_allclose(logps, want[..., 0].numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(entropy, want_entropy.numpy(), atol=1e-5, rtol=0)


def _batch(B=16, P=4, N=6, vocab=128, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, size=(B, P + N)).astype(np.int32)
  mask = np.ones((B, P + N), np.float32)
  lengths = rng.integers(1, N + 1, size=B)  # Completion tokens per row.
  completion_mask = (np.arange(N)[None] < lengths[:, None]).astype(np.float32)
  mask[:, P:] = completion_mask
  for b in range(B):
    mask[b, :b % 3] = 0
  return {
      "tokens": tokens, "mask": mask.astype(np.int32),
      "completion_mask": completion_mask,
      "sampler_logps": rng.normal(-2.0, 0.5, size=(B, N)).astype(np.float32),
      "advantages": rng.normal(size=B).astype(np.float32),
  }, lengths


def _settings(loss_type, micro_batches, beta=0.0, N=6):
  return learner.LossSettings(
      epsilon=0.2, epsilon_high=0.28, beta=beta, loss_type=loss_type,
      temperature=1.0, prompt_len=4, max_completion_length=N,
      micro_batches=micro_batches, logps_chunk=4)


def _loss_and_grads(config, settings, params, batch):
  return jax.jit(learner.loss_and_grads, static_argnums=(0, 1))(
      config, settings, params, batch)


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_accumulation_of_4_equals_the_whole_batch(loss_type):
  config = tiny_config("llama", num_layers=2)
  params = decoder.init_params(config)  # Initialization scale, not sharpened.
  batch, lengths = _batch()
  A, n, B, N = batch["advantages"], lengths, len(lengths), 6
  # On policy with beta = 0 every token's loss is -A of its row.
  whole = {
      "grpo": -A.mean(),
      "dapo": -(A * n).sum() / n.sum(),
      "dr_grpo": -(A * n).sum() / (B * N),
      # TRL's bnpo under accumulation: the mean of micro-batch token means,
      # micro-batch m holding rows m, m + 4, ...
      "bnpo": np.mean([-(A[m::4] * n[m::4]).sum() / n[m::4].sum()
                       for m in range(4)]),
  }[loss_type]
  loss_1, grads_1, _ = _loss_and_grads(config, _settings(loss_type, 1),
                                       params, batch)
  loss_4, grads_4, _ = _loss_and_grads(config, _settings(loss_type, 4),
                                       params, batch)
  assert abs(float(loss_4) - whole) <= 1e-5
  if loss_type == "bnpo":
    parts = [_loss_and_grads(config, _settings("bnpo", 1), params,
                             jax.tree.map(lambda x: x[m::4], batch))
             for m in range(4)]
    grads_1 = jax.tree.map(lambda *g: sum(g) / 4, *[p[1] for p in parts])
  else:
    assert abs(float(loss_1) - whole) <= 1e-5
  assert _max_diff(grads_1, grads_4) <= 1e-5
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_4)) > 1e-3


def test_accumulation_with_kl_and_old_logps_equals_the_whole_batch():
  config = tiny_config("gemma2", num_layers=2)
  params = decoder.init_params(config)
  batch, _ = _batch(seed=1)
  rng = np.random.default_rng(2)
  batch["old_logps"] = rng.normal(-2.0, 0.3, size=(16, 6)).astype(np.float32)
  batch["ref_logps"] = rng.normal(-2.0, 0.3, size=(16, 6)).astype(np.float32)
  loss_1, grads_1, _ = _loss_and_grads(config, _settings("dapo", 1, 0.04),
                                       params, batch)
  loss_4, grads_4, _ = _loss_and_grads(config, _settings("dapo", 4, 0.04),
                                       params, batch)
  assert abs(float(loss_1) - float(loss_4)) <= 1e-5
  assert _max_diff(grads_1, grads_4) <= 1e-5


def test_micro_batches_span_every_data_shard():
  assert len(jax.devices()) == 8
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  B, M = 16, 4
  rows = jax.device_put(np.arange(B), sharding.batch_sharding(mesh))
  shard_of_row = {}
  for shard in rows.addressable_shards:
    for r in np.asarray(shard.data):
      shard_of_row[int(r)] = shard.index[0].start
  assert len(set(shard_of_row.values())) == 4  # Four data-parallel shards.
  micro = jax.jit(learner.split_micro_batches, static_argnums=1)(rows, M)
  micro_rows = np.asarray(micro)
  for m in range(M):
    assert sorted(micro_rows[m]) == list(range(m, B, M))
    assert {shard_of_row[int(r)] for r in micro_rows[m]} == set(
        shard_of_row.values())
  # No reshuffle across devices: each device holds its rows of every
  # micro-batch.
  for shard in micro.addressable_shards:
    assert shard.data.shape[0] == M


def test_completion_logps_memory_at_qwen3_vocabulary():
  """B=8, N=256, V=151,936: below 2x one [B, N, V] float32 array."""
  config = family_config("qwen3", vocab_size=151936, hidden_size=64,
                         intermediate_size=96, num_layers=1, num_heads=4,
                         num_kv_heads=2, head_dim=16)
  abstract, _ = decoder.abstract_params(config)
  B, P, N, V = 8, 16, 256, 151936
  tokens = jax.ShapeDtypeStruct((B, P + N), jnp.int32)
  one_array = B * N * V * 4

  def total_bytes(fn, *args):
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes
            + m.temp_size_in_bytes - m.alias_size_in_bytes)

  forward = lambda p, t, k: learner.completion_logps(config, p, t, k, P, 1.0)
  grad = jax.grad(lambda p, t, k: forward(p, t, k)[0].sum())
  forward_bytes = total_bytes(forward, abstract, tokens, tokens)
  grad_bytes = total_bytes(grad, abstract, tokens, tokens)
  print(f"forward {forward_bytes / one_array:.2f}x, "
        f"gradient {grad_bytes / one_array:.2f}x one [B, N, V] f32 array")
  assert forward_bytes < 2 * one_array
  assert grad_bytes < 2 * one_array


def test_cast_params_keeps_norm_scales_float32():
  config = tiny_config("qwen3")
  cast = learner.cast_params(tiny_params(config), "bfloat16")
  flat = jax.tree_util.tree_flatten_with_path(cast)[0]
  for path, leaf in flat:
    want = jnp.float32 if path[-1].key == "scale" else jnp.bfloat16
    assert leaf.dtype == want, jax.tree_util.keystr(path)


def test_bfloat16_compute_moves_float32_masters_like_float32_compute():
  """Three updates on one batch at a realistic learning rate: bf16 compute
  with f32 master weights changes every tensor, in the f32 run's
  direction; stored in bf16 the same updates would round away."""
  import ml_collections
  config = tiny_config("qwen3", num_layers=2)
  params = decoder.init_params(config)
  batch, _ = _batch(seed=3)
  c = ml_collections.ConfigDict({
      "optim": dict(learning_rate=1e-5, warmup_steps=0, final_lr_fraction=1.0,
                    b1=0.9, b2=0.99, weight_decay=0.0, max_grad_norm=1.0),
      "train": dict(num_steps=3), "grpo": dict(num_iterations=1)})
  optimizer = learner.make_optimizer(c)
  deltas = {}
  for compute in ("float32", "bfloat16"):
    state = learner.TrainState(jax.tree.map(jnp.copy, params),
                               optimizer.init(params))
    for _ in range(3):
      state, m = learner.update_step(config.replace(dtype=compute),
                                     _settings("dapo", 2), optimizer, state,
                                     batch)
      assert m["finite"]
    deltas[compute] = jax.tree.map(lambda a, b: a - b, state.params, params)
    assert all(leaf.dtype == jnp.float32
               for leaf in jax.tree.leaves(state.params))
  flat32 = jax.tree_util.tree_flatten_with_path(deltas["float32"])[0]
  flat16 = jax.tree.leaves(deltas["bfloat16"])
  rounded_away = []
  for (path, d32), d16, p in zip(flat32, flat16, jax.tree.leaves(params)):
    name = jax.tree_util.keystr(path)
    d32, d16 = np.asarray(d32).ravel(), np.asarray(d16).ravel()
    assert np.max(np.abs(d16)) > 0, name
    cosine = d32 @ d16 / (np.linalg.norm(d32) * np.linalg.norm(d16))
    assert cosine > 0.9, (name, cosine)
    p = np.asarray(p).ravel()
    as_bf16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32)
    rounded_away.append(np.mean(as_bf16(p + d16) == as_bf16(p)))
  # Most of each update would vanish in bf16 master weights.
  assert np.mean(rounded_away) > 0.5, rounded_away
