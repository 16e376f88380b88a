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
  v6e-8   one host of Cloud TPU v6e (`v6e-8`, 8 chips):
          mesh fsdp=8, 16 prompts x 8 generations a step in two
          micro-batches, remat dots.
  v5p-64  Cloud TPU v5p, 8 hosts (`v5p-64`, 32 chips):
          mesh fsdp=32, 32 prompts x 8 generations a step, remat dots.
  TPU presets pad prompts to 256 tokens (one compiled update per
  run). Check that one fits, from any machine with the tpu extra:
    hmx-feel aot --config configs/qwen3_4b.py:v5p-64
"""

from hmx_jax import base_config


PRESETS = ("smoke", "v6e-8", "v5p-64")


def get_config(arg=None):
  c = base_config.paper_model("qwen3-4b")
  if arg == "smoke":
    base_config.smoke(c, "tiny-qwen3")
  elif arg == "v6e-8":
    base_config.tpu(c, "v6e-8", runtime_version="v2-alpha-tpuv6e",
                    mesh={"fsdp": 8})
    # Two micro-batches of 64 rows: the whole batch's activations (25 GiB
    # of temporaries) do not fit beside the train state in 31.25 GiB.
    base_config.tpu_run(c, prompts_per_step=16, remat="dots",
                        gradient_accumulation_steps=2)
  elif arg == "v5p-64":
    base_config.tpu(c, "v5p-64", runtime_version="v2-alpha-tpuv5",
                    mesh={"fsdp": 32})
    base_config.tpu_run(c, prompts_per_step=32, remat="dots")
  elif arg:
    raise base_config.unknown_preset(arg, PRESETS)
  return c
