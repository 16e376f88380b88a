"""GRPO with rubric self-reward on Llama-3.2-3B-Instruct.

Hub: meta-llama/Llama-3.2-3B-Instruct.

  hmx-feel train --config configs/llama3p2_3b.py --workdir runs/llama3p2_3b
  hmx-feel eval --config configs/llama3p2_3b.py --workdir runs/llama3p2_3b \
      --base
  hmx-feel eval --config configs/llama3p2_3b.py --workdir runs/llama3p2_3b
  hmx-feel reproduce --config configs/llama3p2_3b.py --workdir runs/llama_exp

The checkpoint is downloaded from the hub on first use (needs a network, and
the model's license accepted on the hub with a logged-in token). For a local
copy (config.json, safetensors and tokenizer files), add to any of these
commands:

  --config.model.spec=/path/to/Llama-3.2-3B-Instruct

Llama 3.2's template writes a date into the system header; it gets
`model.chat.date_string`, not today's date, so prompts do not change from
day to day.

Presets:
  (none)  the full model: float32 master weights, bfloat16 compute, answers
          of up to 256 tokens.
  smoke   a tiny random Llama 3 (`tiny-llama3`: the real chat template and
          special tokens) for two GRPO steps and a few items per evaluation,
          on a CPU:
            hmx-feel train --config configs/llama3p2_3b.py:smoke --workdir W
            hmx-feel eval --config configs/llama3p2_3b.py:smoke --workdir W \
                --base
  v5e-8   one host of Cloud TPU v5e (`v5litepod-8`, 8 chips):
          mesh fsdp=8, 16 prompts x 8 generations a step in two
          micro-batches, remat full.
  v5e-32  Cloud TPU v5e, 8 hosts (`v5litepod-32`, 32 chips):
          mesh data=4 fsdp=8, 32 prompts x 8 generations a step, remat full.
  TPU presets pad prompts to 256 tokens (one compiled update per
  run). Check that one fits, from any machine with the tpu extra:
    hmx-feel aot --config configs/llama3p2_3b.py:v5e-32
"""

from hmx_jax import base_config


PRESETS = ("smoke", "v5e-8", "v5e-32")


def get_config(arg=None):
  c = base_config.paper_model("llama-3.2-3b-instruct")
  if arg == "smoke":
    base_config.smoke(c, "tiny-llama3")
  elif arg == "v5e-8":
    base_config.tpu(c, "v5litepod-8", runtime_version="v2-alpha-tpuv5-lite",
                    mesh={"fsdp": 8})
    # Two micro-batches and full remat: all 16 rows per chip at once need
    # 19.6 GiB of temporaries with dots remat, over v5e's 15.75.
    base_config.tpu_run(c, prompts_per_step=16, remat="full",
                        gradient_accumulation_steps=2)
  elif arg == "v5e-32":
    base_config.tpu(c, "v5litepod-32", runtime_version="v2-alpha-tpuv5-lite",
                    mesh={"data": 4, "fsdp": 8})
    # Full remat: with dots remat the update needs 18.2 GiB per chip.
    base_config.tpu_run(c, prompts_per_step=32, remat="full")
  elif arg:
    raise base_config.unknown_preset(arg, PRESETS)
  return c
