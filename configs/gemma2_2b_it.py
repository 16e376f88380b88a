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
  v5e-8   one host of Cloud TPU v5e (`v5litepod-8`, 8 chips):
          mesh fsdp=8, 16 prompts x 8 generations a step in two
          micro-batches, remat full.
  v5e-16  Cloud TPU v5e, 4 hosts (`v5litepod-16`, 16 chips):
          mesh data=2 fsdp=8, 32 prompts x 8 generations a step in two
          micro-batches, remat full.
  TPU presets pad prompts to 256 tokens (one compiled update per
  run). Check that one fits, from any machine with the tpu extra:
    hmx-feel aot --config configs/gemma2_2b_it.py:v5e-16
"""

from hmx_jax import base_config


PRESETS = ("smoke", "v5e-8", "v5e-16")


def get_config(arg=None):
  c = base_config.paper_model("gemma-2-2b-it")
  if arg == "smoke":
    base_config.smoke(c, "tiny-gemma2")
  elif arg == "v5e-8":
    base_config.tpu(c, "v5litepod-8", runtime_version="v2-alpha-tpuv5-lite",
                    mesh={"fsdp": 8})
    # Two micro-batches and full remat: all 16 rows per chip at once need
    # 19.5 GiB of temporaries with dots remat, two micro-batches 15.7,
    # over v5e's 15.75 beside the train state.
    base_config.tpu_run(c, prompts_per_step=16, remat="full",
                        gradient_accumulation_steps=2)
  elif arg == "v5e-16":
    base_config.tpu(c, "v5litepod-16", runtime_version="v2-alpha-tpuv5-lite",
                    mesh={"data": 2, "fsdp": 8})
    base_config.tpu_run(c, prompts_per_step=32, remat="full",
                        gradient_accumulation_steps=2)
  elif arg:
    raise base_config.unknown_preset(arg, PRESETS)
  return c
