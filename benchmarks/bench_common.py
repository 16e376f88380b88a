"""What the benchmarks share: best-of-N timing and the transformers (torch)
copy of the embedded model. Imported as `bench_common` by the scripts of
this folder, which run as `python benchmarks/<name>.py`."""

import os
import time


def timed(fn, repeats):
  """(best wall time of `repeats` calls, the last call's result)."""
  best, result = float("inf"), None
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return best, result


def transformers_embedded_model():
  """The embedded SmolLM2 GGUF loaded by transformers in float32 (torch on
  every core), the peer of our model."""
  import torch
  import transformers
  from hmx_jax.models import gguf_io
  torch.set_num_threads(os.cpu_count())
  path = gguf_io.embedded_gguf_path()
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path),
      dtype=torch.float32).eval()
