"""GRPO with rubric self-reward on Qwen3-4B (hub: Qwen/Qwen3-4B).

  hmx-feel train --config configs/qwen3_4b.py --workdir runs/qwen3_4b
  hmx-feel eval --config configs/qwen3_4b.py --workdir runs/qwen3_4b --base
  hmx-feel eval --config configs/qwen3_4b.py --workdir runs/qwen3_4b
  hmx-feel reproduce --config configs/qwen3_4b.py --workdir runs/qwen3_4b_exp

The checkpoint is downloaded from the hub on first use (needs a network).
For a local copy (config.json, safetensors and tokenizer files), add to any
of these commands:

  --config.model.spec=/path/to/Qwen3-4B

Prompts are rendered with Qwen3's template and `enable_thinking=False`
(`model.chat.enable_thinking`): no `<think>` block.

Presets:
  (none)  the full model: float32 master weights, bfloat16 compute, answers
          of up to 256 tokens.
  smoke   a tiny random Qwen3 (`tiny-qwen3`: the real chat template and
          special tokens) for two GRPO steps and a few items per evaluation,
          on a CPU:
            hmx-feel train --config configs/qwen3_4b.py:smoke --workdir W
            hmx-feel eval --config configs/qwen3_4b.py:smoke --workdir W --base
  TPU presets (v5e-8, v5p-64, ...) are not written yet.
"""

from hmx_jax import base_config


def get_config(arg=None):
  c = base_config.paper_model("qwen3-4b")
  if arg == "smoke":
    base_config.smoke(c, "tiny-qwen3")
  # TPU presets go here, one `elif arg == "v5p-64":` branch each (mesh
  # shape, batch sizes, remat); they come with the pod-scale work.
  elif arg:
    raise base_config.unknown_preset(arg, ("smoke",))
  return c
