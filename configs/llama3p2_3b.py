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
  TPU presets (v5e-8, v5p-64, ...) are not written yet.
"""

from hmx_jax import base_config


def get_config(arg=None):
  c = base_config.paper_model("llama-3.2-3b-instruct")
  if arg == "smoke":
    base_config.smoke(c, "tiny-llama3")
  # TPU presets go here, one `elif arg == "v5p-64":` branch each (mesh
  # shape, batch sizes, remat); they come with the pod-scale work.
  elif arg:
    raise base_config.unknown_preset(arg, ("smoke",))
  return c
