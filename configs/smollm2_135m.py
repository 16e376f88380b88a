"""GRPO on the embedded SmolLM2-135M-Instruct.

  hmx-feel train --config configs/smollm2_135m.py:smoke --workdir runs/smoke
  hmx-feel train --config configs/smollm2_135m.py:cpu --workdir runs/cpu \
      --config.reward.direction=reverse

Presets: `smoke` (two steps, well under a minute of steps on a laptop CPU),
`cpu` (a real small run on a 2-core CPU).
"""

from hmx_jax import base_config


def get_config(arg=None):
  c = base_config.get_config("smollm2-135m-instruct")
  if arg == "smoke":
    base_config.smoke(c)
  elif arg == "cpu":
    base_config.cpu(c)
  elif arg not in (None, ""):
    raise ValueError(f"unknown preset {arg!r}: use smoke or cpu")
  return c
