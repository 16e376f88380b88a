"""GRPO with rubric self-reward on Gemma-2-2B-IT (hub: google/gemma-2-2b-it).

  hmx-feel train --config configs/gemma2_2b_it.py --workdir runs/gemma2_2b_it
  hmx-feel eval --config configs/gemma2_2b_it.py --workdir runs/gemma2_2b_it \
      --base
  hmx-feel eval --config configs/gemma2_2b_it.py --workdir runs/gemma2_2b_it
  hmx-feel reproduce --config configs/gemma2_2b_it.py --workdir runs/gemma2_exp

The checkpoint is downloaded from the hub on first use (needs a network, and
the model's license accepted on the hub with a logged-in token). For a local
copy (config.json, safetensors and tokenizer files), add to any of these
commands:

  --config.model.spec=/path/to/gemma-2-2b-it

Gemma 2's template refuses a system turn: its text is folded into the first
user turn. Raw-text evaluation contexts start with <bos>, as
lm-evaluation-harness encodes them for Gemma.

Presets:
  (none)  the full model: float32 master weights, bfloat16 compute, answers
          of up to 256 tokens.
  smoke   a tiny random Gemma 2 (`tiny-gemma2`: the real chat template and
          special tokens) for two GRPO steps and a few items per evaluation,
          on a CPU:
            hmx-feel train --config configs/gemma2_2b_it.py:smoke --workdir W
            hmx-feel eval --config configs/gemma2_2b_it.py:smoke --workdir W \
                --base
  TPU presets (v5e-8, v5p-64, ...) are not written yet.
"""

from hmx_jax import base_config


def get_config(arg=None):
  c = base_config.paper_model("gemma-2-2b-it")
  if arg == "smoke":
    base_config.smoke(c, "tiny-gemma2")
  # TPU presets go here, one `elif arg == "v5p-64":` branch each (mesh
  # shape, batch sizes, remat); they come with the pod-scale work.
  elif arg:
    raise base_config.unknown_preset(arg, ("smoke",))
  return c
