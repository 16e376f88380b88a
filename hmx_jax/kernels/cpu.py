"""CPU decode kernels (XLA FFI calls), compiled for the host on first use.

XLA's CPU dots reach about half of the memory bandwidth on the few-row
matmuls of decoding (one token per sequence), and in a layer scan they first
copy each layer's weight slice. `cpu_kernels.cc` streams pre-packed weights
(`pack`, `matmul`) and reads one layer of the KV cache for one-token
attention (`decode_attention`), in place in the stacked arrays, on the
calling thread and XLA's intra-op pool. The sampler uses them on CPU
(`hmx_jax.sampling.generate(..., cpu_kernels=...)`); training and scoring
forwards keep XLA's dots.

The shared library is built with the system C++ compiler (`$CXX`, else
`c++`, `g++` or `clang++`) and `-march=native`, and cached under
`$HMX_JAX_KERNEL_CACHE` (default `~/.cache/hmx_jax/kernels`), keyed by the
source, the compiler and the host CPU. Without a compiler, or with
`HMX_JAX_CPU_KERNELS=0`, `available()` is False and callers use XLA's dots.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

LANES = 32  # Output columns per packed panel (the kernel's constant).
TARGET = "hmx_packed_matmul"
PACK_TARGET = "hmx_pack"
ATTENTION_TARGET = "hmx_decode_attention"
_SOURCE = pathlib.Path(__file__).with_name("cpu_kernels.cc")
_log = logging.getLogger(__name__)


def _cache_dir() -> pathlib.Path:
  default = pathlib.Path.home() / ".cache" / "hmx_jax" / "kernels"
  return pathlib.Path(os.environ.get("HMX_JAX_KERNEL_CACHE", default))


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _host_cpu() -> str:
  """The CPU's model and feature flags: a library built for one CPU with
  -march=native may not run on another that shares the cache directory."""
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return platform.processor() or platform.machine()
  keep = ("model name", "flags", "Features", "CPU part")
  lines = sorted({ln for ln in text.splitlines()
                  if ln.split(":")[0].strip() in keep})
  return platform.machine() + "\n" + "\n".join(lines)


def _build(cxx: str) -> pathlib.Path:
  include = jax.ffi.include_dir()
  flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC",
           "-fopenmp-simd", "-fno-math-errno"]
  key = hashlib.sha256("\0".join(
      [_SOURCE.read_text(), cxx, " ".join(flags), include, _host_cpu()]
  ).encode()).hexdigest()[:16]
  out = _cache_dir() / f"cpu_kernels-{key}.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Build under a temporary name, then rename: concurrent processes never
  # load a half-written library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  try:
    subprocess.run([cxx, *flags, f"-I{include}", str(_SOURCE), "-o", tmp],
                   check=True, capture_output=True, text=True)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


@functools.cache
def available() -> bool:
  """Builds and registers the kernels once; False when they cannot be used."""
  if os.environ.get("HMX_JAX_CPU_KERNELS", "1") == "0":
    return False
  cxx = _compiler()
  if cxx is None:
    _log.warning("no C++ compiler found ($CXX, c++, g++, clang++); CPU "
                 "decoding uses XLA's dots")
    return False
  try:
    lib = ctypes.CDLL(str(_build(cxx)))
    symbols = ((TARGET, lib.HmxPackedMatmul), (PACK_TARGET, lib.HmxPack),
               (ATTENTION_TARGET, lib.HmxDecodeAttention))
  except (OSError, AttributeError, subprocess.CalledProcessError) as e:
    detail = getattr(e, "stderr", "") or str(e)
    errors = [ln for ln in detail.splitlines() if "error" in ln] or [detail]
    _log.warning("building %s failed; CPU decoding uses XLA's dots: %s",
                 _SOURCE, errors[0].strip())
    return False
  for name, symbol in symbols:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol),
                                platform="cpu")
  return True


def _require():
  if not available():
    raise RuntimeError("the CPU decode kernels are unavailable (no C++ "
                       "compiler, a failed build, or HMX_JAX_CPU_KERNELS=0)")


def pack(w: jax.Array, transposed: bool = False) -> jax.Array:
  """Weights [..., K, N] -> panels [..., P, K, 32], N zero-padded to 32s.

  With `transposed`, `w` is [..., N, K] (an embedding used as the output
  projection) and packs as its transpose. Runs the kernel library's
  multi-threaded copy; needs `available()`.
  """
  _require()
  *lead, a, b = w.shape
  K, N = (b, a) if transposed else (a, b)
  P = -(-N // LANES)
  flat = w.reshape(-1, a, b).astype(jnp.float32)
  out = jax.ffi.ffi_call(PACK_TARGET, jax.ShapeDtypeStruct(
      (flat.shape[0], P, K, LANES), jnp.float32))(flat, transposed=transposed)
  return out.reshape(*lead, P, K, LANES)


def matmul(x: jax.Array, packed: jax.Array, n: int, layer=0) -> jax.Array:
  """x [..., K] @ the `layer`-th packed [K, n] matrix, in float32.

  Args:
    x: activations; leading axes are flattened into rows.
    packed: `pack` output, [P, K, 32] or stacked [L, P, K, 32].
    n: the matrix's true number of columns (before padding).
    layer: index into the stacked matrices (a traced int is fine).
  """
  _require()
  if packed.ndim == 3:
    packed = packed[None]
  *lead, K = x.shape
  rows = x.reshape(-1, K).astype(jnp.float32)
  width = packed.shape[1] * LANES
  y = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((rows.shape[0], width),
                                                    jnp.float32))(
      rows, packed, jnp.asarray(layer, jnp.int32))
  if width != n:
    y = y[:, :n]
  return y.reshape(*lead, n)


def decode_attention(q_BKGD: jax.Array, k_BKD: jax.Array, v_BKD: jax.Array,
                     cache: dict[str, jax.Array], layer, allowed_BS: jax.Array,
                     scale: float, softcap: float | None = None) -> jax.Array:
  """Attention of one new token per row over layer `layer` of the cache.

  Args:
    q_BKGD: queries, grouped by kv head: [B, kv_heads, group, head_dim].
    k_BKD: the new token's key, [B, kv_heads, head_dim]; v_BKD its value.
    cache: {"k", "v"}: [layers, B, kv_heads, S, head_dim] float32, read in
      place (the new token is not in it yet).
    layer: the layer to read.
    allowed_BS: which cache slots each row attends to (padding, future slots
      and slots outside a sliding window are False).
    scale: multiplies q.k.
    softcap: Gemma 2's attention logit soft-cap, or None.

  Returns:
    [B, kv_heads, group, head_dim]: the softmax-weighted values over the
    allowed slots and the new token itself.
  """
  _require()
  return jax.ffi.ffi_call(ATTENTION_TARGET, jax.ShapeDtypeStruct(
      q_BKGD.shape, jnp.float32))(
          q_BKGD.astype(jnp.float32), k_BKD.astype(jnp.float32),
          v_BKD.astype(jnp.float32), cache["k"], cache["v"],
          jnp.asarray(layer, jnp.int32), allowed_BS.astype(bool),
          scale=np.float32(scale), softcap=np.float32(softcap or 0.0))
