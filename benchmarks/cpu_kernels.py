"""CPU decode kernels against XLA's dots, on SmolLM2-135M's decode shapes.

  python benchmarks/cpu_kernels.py [--rows 8] [--layers 30]

Each matmul runs as a decode step does: a scan over `--layers` stacked
float32 matrices, one small batch of rows through each, so the weights come
from memory, not cache. XLA's side is `x @ w` with the scan slicing `w`;
ours is `kernels.cpu.matmul` on the packed stack. Reported as the weight
bytes streamed per second, the figure that bounds decoding.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from hmx_jax.kernels import cpu

# (name, K, N) of SmolLM2-135M's per-layer matrices, q|k|v and gate|up fused.
SHAPES = [("attn/qkv", 576, 960), ("attn/o", 576, 576),
          ("mlp/gate_up", 576, 3072), ("mlp/down", 1536, 576)]


def best_time(fn, *args, repeats=7, calls=5):
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / calls)
  return best


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rows", type=int, default=8)
  parser.add_argument("--layers", type=int, default=30)
  args = parser.parse_args()
  if not cpu.available():
    raise SystemExit("the CPU kernels could not be built on this machine")
  rng = np.random.default_rng(0)
  L, M = args.layers, args.rows
  print(f"{M} rows, a scan over {L} stacked float32 matrices\n")
  print("| matrix | K x N | XLA GB/s | kernel GB/s | ratio |")
  print("|---|---:|---:|---:|---:|")
  for name, K, N in SHAPES:
    w = jnp.asarray(rng.standard_normal((L, K, N), dtype=np.float32))
    x = jnp.asarray(rng.standard_normal((M, K), dtype=np.float32))
    packed = cpu.pack(w)

    # Each layer's input depends on the previous output, as in a model.
    @jax.jit
    def xla(w, x):
      def body(h, w_l):
        y = (x + h) @ w_l
        return jnp.mean(y, axis=1, keepdims=True) * 1e-3, None
      return jax.lax.scan(body, jnp.zeros((M, 1)), w)[0]

    @jax.jit
    def kernel(packed, x):
      def body(h, layer):
        y = cpu.matmul(x + h, packed, N, layer)
        return jnp.mean(y, axis=1, keepdims=True) * 1e-3, None
      return jax.lax.scan(body, jnp.zeros((M, 1)),
                          jnp.arange(L, dtype=jnp.int32))[0]

    np.testing.assert_allclose(xla(w, x), kernel(packed, x), rtol=1e-4,
                               atol=1e-5)
    gbytes = w.nbytes / 1e9
    t_xla, t_kernel = best_time(xla, w, x), best_time(kernel, packed, x)
    print(f"| {name} | {K} x {N} | {gbytes / t_xla:.1f} | "
          f"{gbytes / t_kernel:.1f} | {t_xla / t_kernel:.2f}x |")


if __name__ == "__main__":
  main()
