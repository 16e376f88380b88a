"""`hmx-feel aot` and `model.remat`.

The aot tests compile for a Cloud TPU slice on this CPU and need libtpu (the
`tpu` extra); without it they are skipped. Their memory numbers are checked
against the bytes written out by hand from the model's dimensions and the
mesh, not against our own accounting.
"""

import importlib.util
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmx_jax import learner
from hmx_jax.errors import UserError
from hmx_jax.models import decoder, tiny

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
SMALL = "configs/qwen3_0p6b.py:v5e-8"


def needs_libtpu(test):
  """Marks `test` as needing libtpu, and skips it where it is absent."""
  test = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed "
                            "(pip install -e '.[tpu]')")(test)
  return pytest.mark.tpu(test)


def run_aot(*args, timeout=900):
  return subprocess.run([sys.executable, "-m", "hmx_jax.cli", "aot", *args],
                        capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ remat

def _grads(config, params, tokens, mask):
  def loss(p):
    logps, _ = learner.completion_logps(config, p, tokens, mask, 3, 1.0, 4)
    return jnp.sum(logps)
  return jax.grad(loss)(params)


@pytest.mark.slow  # 55 s for both
@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gradients_equal_no_remat(policy):
  config, params, _ = tiny.build("tiny-qwen3")
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, config.vocab_size, (2, 9)), jnp.int32)
  mask = jnp.ones((2, 9), jnp.int32).at[0, :2].set(0)
  expected = _grads(config, params, tokens, mask)
  got = _grads(config.replace(remat=policy), params, tokens, mask)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5,
                               atol=1e-6)


def test_remat_recomputes_in_the_backward_pass():
  """The compiled backward keeps fewer bytes of activations with remat."""
  config, params, _ = tiny.build("tiny-qwen3")
  config = config.replace(num_layers=4)
  params = decoder.init_params(config)
  tokens = jnp.zeros((8, 128), jnp.int32)
  mask = jnp.ones((8, 128), jnp.int32)

  def temp_bytes(policy):
    grad = jax.jit(lambda p: _grads(config.replace(remat=policy), p, tokens,
                                    mask))
    return grad.lower(params).compile().memory_analysis().temp_size_in_bytes
  none, dots, full = temp_bytes("none"), temp_bytes("dots"), temp_bytes("full")
  assert full < dots < none


def test_unrolled_layers_are_the_scan_without_its_loop():
  """`scan_layers=False`: the same parameters and logits, and a compiled
  program without a while loop (whose body the cost analysis would count
  once)."""
  config, params, _ = tiny.build("tiny-qwen3")
  tokens = jnp.asarray(np.random.default_rng(0).integers(
      0, config.vocab_size, (2, 7)), jnp.int32)
  mask = jnp.ones((2, 7), jnp.int32)
  unrolled = config.replace(scan_layers=False)
  np.testing.assert_allclose(
      np.asarray(decoder.forward(unrolled, params, tokens, mask)),
      np.asarray(decoder.forward(config, params, tokens, mask)),
      rtol=0, atol=1e-5)

  def has_loop(c):
    forward = jax.jit(lambda p: decoder.forward(c, p, tokens, mask))
    return "while" in forward.lower(params).compile().as_text()
  assert has_loop(config) and not has_loop(unrolled)


def test_unknown_remat_is_one_line():
  config, _, _ = tiny.build("tiny-qwen3")
  with pytest.raises(UserError, match=r"model.remat='some' is not one of "
                     "none, full, dots"):
    config.replace(remat="some")


# -------------------------------------------------------------------- aot

# TPU memory lays 32-bit arrays out in tiles of (8, 128) elements over
# their last two dimensions: a [28, 128] scale takes 32 rows; a vector takes
# a multiple of 128 elements, a scalar 128 (512 bytes).
VECTOR_BYTES = 128 * 4


def _batch_bytes(c, chips: int) -> int:
  """Per-chip bytes of the update's batch: int32 tokens and mask [B, P+N];
  f32 completion mask, sampler and reference log-probs [B, N]; f32
  advantages [B] (16 of them per chip here: 128 elements); rows split over
  the chips."""
  rows = c.train.prompts_per_step * c.grpo.num_generations // chips
  length = c.sampling.max_prompt_len + c.sampling.max_new_tokens
  assert rows % 8 == 0 and rows <= 128
  return (rows * (4 * 2 * length + 4 * 3 * c.sampling.max_new_tokens)
          + VECTOR_BYTES)


def _qwen3_0p6b_state_bytes(chips: int) -> int:
  """Per-chip bytes of Qwen3-0.6B's train state on a {"fsdp": chips} mesh,
  by hand from its config.json (V=151936, D=1024, F=3072, 28 layers, 16
  heads, 8 KV heads, head_dim 128, tied embeddings): f32 params and Adam's
  two moments."""
  V, D, F, layers, H, K, Dh = 151936, 1024, 3072, 28, 16, 8, 128
  matrices = (D * H * Dh + 2 * D * K * Dh + H * Dh * D  # q, k, v, o
              + 3 * D * F)  # gate, up, down
  # Every tensor with a D axis is split over fsdp: the embedding, the
  # matrices, the final norm, the two residual-stream norms of each layer
  # ([28, D / chips]); q_norm and k_norm ([28, head_dim]) are whole. The
  # four [28, 128] scales take 32 rows each.
  assert D // chips == Dh == 128
  elements = (V * D + layers * matrices + D) // chips + 4 * 32 * 128
  params = 4 * elements
  # mu and nu mirror the params; two int32 step counts (Adam's and the
  # learning-rate schedule's), 512 bytes each.
  return 3 * params + 2 * VECTOR_BYTES


@pytest.fixture(scope="module")
def small_preset():
  from hmx_jax import aot, config_lib
  c = config_lib.load_config(SMALL)
  return c, aot.compile_preset(c, SMALL)


# Four programs of a 0.6B model for 8 chips, and the one- and two-layer
# programs that count their FLOPs: about 200 s on a quiet 2-core CPU (slow,
# with the FLOP count below, which shares them).
@pytest.mark.slow
@needs_libtpu
def test_small_preset_compiles_and_fits(small_preset):
  c, result = small_preset
  assert [r.name for r in result.reports] == ["update", "prefill", "decode",
                                              "judge"]
  assert not result.too_big()
  for r in result.reports:
    assert 0 < r.total < 15.75 * 2**30 and r.flops > 0 and r.seconds > 0, r
  # The update takes the train state and the batch, split over the chips
  # as written out by hand, and updates the donated state in place.
  update = result.reports[0]
  state = _qwen3_0p6b_state_bytes(8)
  assert update.arguments == state + _batch_bytes(c, 8)
  assert update.aliased == state


def _qwen3_0p6b_flops(rows: int, prompt: int, new: int) -> dict:
  """Per-chip FLOPs of Qwen3-0.6B's programs for `rows` rows per chip, by
  hand from its config.json: 2 per multiply-add of each matmul; attention
  scores and values over the whole (masked) key length; the output
  projection at the positions that need logits."""
  V, D, F, layers, H, K, Dh = 151936, 1024, 3072, 28, 16, 8, 128
  layer = D * H * Dh + 2 * D * K * Dh + H * Dh * D + 3 * D * F
  head = D * V
  # q.k and p.v of one query over `keys` keys, all heads, all layers.
  attention = lambda keys: 2 * 2 * keys * H * Dh * layers
  total = prompt + new
  prefill = rows * (2 * layers * layer * prompt + prompt * attention(prompt)
                    + 2 * head)  # logits of the last prompt position
  decode = rows * (2 * (layers * layer + head) + attention(total))
  # The update: forward, and a backward of twice the forward. Remat "dots"
  # recomputes the attention's batched dots in the backward; the log-prob
  # chunks recompute their output projection.
  forward_layers = rows * total * (2 * layers * layer + attention(total))
  forward_head = rows * new * 2 * head
  update = (3 * forward_layers + rows * total * attention(total)
            + 4 * forward_head)
  return {"prefill": prefill, "decode": decode, "update": update}


@pytest.mark.slow
@needs_libtpu
def test_flops_count_every_layer_and_every_shard(small_preset):
  # XLA's cost analysis counts a loop's body once: the layer scan and the
  # compiler's own loops over FSDP shards. The counted FLOPs are the hand
  # count's, to within the elementwise work (norms, RoPE, softmax, Adam).
  c, result = small_preset
  rows = c.train.prompts_per_step * c.grpo.num_generations // 8
  expected = _qwen3_0p6b_flops(rows, c.sampling.max_prompt_len,
                               c.sampling.max_new_tokens)
  counted = {r.name: r.flops for r in result.reports}
  for name, flops in expected.items():
    assert flops <= counted[name] <= 1.02 * flops, (name, counted[name], flops)
  assert all(r.counted for r in result.reports)


@needs_libtpu
def test_a_preset_too_big_exits_1_naming_the_program():
  # 64 times the batch: 8192 rows of KV cache outgrow a v5e chip. Only the
  # prefill is compiled, the cheapest program that shows it (the update's
  # compile alone takes minutes here).
  proc = run_aot("--config", SMALL, "--config.train.prompts_per_step=1024",
                 "--programs=prefill")
  assert proc.returncode == 1, proc.stdout + proc.stderr
  lines = [l for l in proc.stdout.splitlines()
           if l.startswith("does not fit: prefill needs")]
  assert len(lines) == 1 and re.search(r"\d+(\.\d+)? ?Gi?B?", lines[0]), (
      proc.stdout)
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("spec, message", [
    ("configs/qwen3_0p6b.py:v5e-9", "no TPU preset 'v5e-9': this model has "
     "v5e-8, v5e-16"),
    ("configs/qwen3_0p6b.py:smoke", "not a TPU preset"),
])
def test_bad_input_exits_2_with_one_line(spec, message):
  proc = run_aot("--config", spec, timeout=120)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  errors = [l for l in proc.stderr.splitlines() if "error" in l]
  assert len(errors) == 1 and message in errors[0], proc.stderr
