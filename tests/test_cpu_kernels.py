"""CPU decode kernels: float64 references, packing, and the fallbacks."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmx_jax.kernels import cpu

pytestmark = pytest.mark.skipif(cpu._compiler() is None,
                                reason="no C++ compiler to build the kernels")


def _rand(rng, *shape):
  return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("M, K, N", [(1, 64, 40), (8, 576, 96), (13, 100, 33),
                                     (3, 7, 1), (20, 32, 64)])
def test_matmul_equals_float64_reference_at_every_layer(M, K, N):
  assert cpu.available()
  rng = np.random.default_rng(M * 1000 + N)
  w = _rand(rng, 3, K, N)
  x = _rand(rng, M, K)
  packed = cpu.pack(jnp.asarray(w))
  assert packed.shape == (3, -(-N // 32), K, 32)

  # As the decoder calls it: a traced layer index inside a scan.
  @jax.jit
  def per_layer(x, packed):
    def body(_, layer):
      return None, cpu.matmul(x, packed, N, layer)
    return jax.lax.scan(body, None, jnp.arange(3))[1]

  got = np.asarray(per_layer(jnp.asarray(x), packed))
  expected = np.einsum("mk,lkn->lmn", x.astype(np.float64), w)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * K ** 0.5)


def test_matmul_keeps_leading_axes():
  rng = np.random.default_rng(0)
  w, x = _rand(rng, 48, 70), _rand(rng, 2, 3, 48)
  got = cpu.matmul(jnp.asarray(x), cpu.pack(jnp.asarray(w)), 70)
  assert got.shape == (2, 3, 70)
  np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("transposed", [False, True])
def test_pack_lays_out_32_column_panels_with_zero_padding(transposed):
  rng = np.random.default_rng(1)
  w_KN = _rand(rng, 2, 5, 45)
  source = np.swapaxes(w_KN, 1, 2) if transposed else w_KN
  packed = np.asarray(cpu.pack(jnp.asarray(source), transposed=transposed))
  assert packed.shape == (2, 2, 5, 32)
  # Panel p, row k, lane j holds column 32 p + j of row k.
  columns = packed.transpose(0, 2, 1, 3).reshape(2, 5, 64)
  np.testing.assert_array_equal(columns[..., :45], w_KN)
  np.testing.assert_array_equal(columns[..., 45:], 0)


def _attention_reference(q, k_new, v_new, cache_k, cache_v, layer, allowed,
                         scale, softcap):
  """float64 attention of one new token per row (the decoder's semantics)."""
  q, k_new, v_new = (a.astype(np.float64) for a in (q, k_new, v_new))
  keys = np.concatenate([cache_k[layer], k_new[:, :, None]], axis=2)
  values = np.concatenate([cache_v[layer], v_new[:, :, None]], axis=2)
  logits = np.einsum("bkgd,bksd->bkgs", q, keys) * scale
  if softcap:
    logits = np.tanh(logits / softcap) * softcap
  ok = np.concatenate([allowed, np.ones_like(allowed[:, :1])], axis=1)
  logits = np.where(ok[:, None, None, :], logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bkgs,bksd->bkgd", probs, values)


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_decode_attention_equals_float64_reference(softcap):
  rng = np.random.default_rng(2)
  L, B, K, G, S, D = 3, 4, 2, 3, 19, 16
  q, k_new, v_new = _rand(rng, B, K, G, D), _rand(rng, B, K, D), _rand(
      rng, B, K, D)
  cache = {"k": _rand(rng, L, B, K, S, D), "v": _rand(rng, L, B, K, S, D)}
  allowed = rng.random((B, S)) < 0.6
  allowed[0] = False  # A row that only sees its own new token.
  for layer in range(L):
    got = cpu.decode_attention(
        jnp.asarray(q), jnp.asarray(k_new), jnp.asarray(v_new),
        jax.tree.map(jnp.asarray, cache), layer, jnp.asarray(allowed), 0.25,
        softcap)
    expected = _attention_reference(q, k_new, v_new, cache["k"], cache["v"],
                                    layer, allowed, 0.25, softcap)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(got)[0], np.broadcast_to(v_new[0][:, None], (K, G, D)),
      rtol=1e-6)


def _run(code, **env):
  return subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu", **env})


FALLBACK = """
from hmx_jax import sampling
from hmx_jax.errors import UserError
from hmx_jax.kernels import cpu
import sys; sys.path.insert(0, "tests")
from helpers import tiny_config, tiny_params
config = tiny_config("qwen3")
params = tiny_params(config)
print("available", cpu.available())
out = sampling.generate(config, params, [[5, 6, 7]], max_new_tokens=3)
print("tokens", out.tokens.tolist())
try:
  sampling.generate(config, params, [[5, 6, 7]], max_new_tokens=3,
                    cpu_kernels=True)
except UserError as e:
  print("error", e)
"""


def test_disabled_kernels_fall_back_to_xla():
  proc = _run(FALLBACK, HMX_JAX_CPU_KERNELS="0")
  assert proc.returncode == 0, proc.stderr
  assert "available False" in proc.stdout
  assert "tokens [[" in proc.stdout
  assert "error cpu_kernels=True but the CPU decode kernels" in proc.stdout


def test_failed_build_warns_once_and_falls_back(tmp_path):
  proc = _run(FALLBACK, CXX="false", HMX_JAX_KERNEL_CACHE=str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  assert "available False" in proc.stdout
  assert proc.stderr.count("building") == 1, proc.stderr
  assert "CPU decoding uses XLA's dots" in proc.stderr
  assert list(tmp_path.iterdir()) == []  # Nothing half-written is left.
