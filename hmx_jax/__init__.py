"""hmx_jax: the HMX-feel experiment in JAX/Flax."""

import os

__version__ = "0.1.0"

# XLA's CPU backend (jaxlib 0.10) hands each lone dot to YNNPACK, whose
# float32 sums are about twice as far from the exact ones as XLA's own
# emitter's or a BLAS's (max relative error 6.9e-7 against 4.4e-7 on a
# [34, 576] x [576, 1536] matmul; SmolLM2's logits 1.5e-4 from float64
# against transformers' 6e-5), and slower on the prefill-shaped matmuls of
# scoring (8x256 tokens: 5.3 s against 3.7 s on a 2-core AVX2 machine).
# XLA reads XLA_FLAGS when its first backend starts, so this takes effect
# unless a computation ran before hmx_jax was imported. A flag already given
# in XLA_FLAGS wins; older jaxlibs, which may not know it, are left alone.
_CPU_DOT_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"


def _prefer_xla_cpu_dots() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return
  try:
    from jaxlib import version
  except ImportError:
    return
  if tuple(version.__version_info__[:2]) < (0, 10):
    return
  os.environ["XLA_FLAGS"] = f"{flags} {_CPU_DOT_FLAG}".strip()


_prefer_xla_cpu_dots()
