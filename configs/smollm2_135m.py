"""GRPO on the embedded SmolLM2-135M-Instruct.

  hmx-feel train --config configs/smollm2_135m.py:smoke --workdir runs/smoke
  hmx-feel train --config configs/smollm2_135m.py:cpu --workdir runs/cpu \
      --config.reward.direction=reverse

Presets: `smoke` (two steps, well under a minute of steps on a laptop CPU),
`cpu` (a real small run on a 2-core CPU).
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(spec="smollm2-135m-instruct", dtype="float32",
                 random_init=False)
  c.mesh = dict(shape={})  # e.g. {"data": 2, "fsdp": 2, "tensor": 2}
  c.data = dict(train_prompts="train", heldout_prompts="heldout")
  c.sampling = dict(max_new_tokens=48, temperature=1.0, top_k=0, top_p=1.0)
  c.reward = dict(
      kind="rubric",  # or target_token (synthetic, for tests)
      target_token=0,
      criteria=("feelings", "intentions", "self_awareness", "coherence"),
      weights={"feelings": 1.0, "intentions": 1.0, "self_awareness": 1.0,
               "coherence": 1.0},
      direction="human_like",  # reverse: the contrast model
      judge="self",  # self (the paper's self-reward), initial, or a model spec
      micro_batch=16)
  c.grpo = dict(num_generations=4, beta=0.04, epsilon=0.2, epsilon_high=0.28,
                loss_type="dapo", scale_rewards="group", num_iterations=1,
                mask_truncated_completions=False)
  c.optim = dict(learning_rate=2e-6, warmup_steps=2, final_lr_fraction=0.1,
                 b1=0.9, b2=0.99, weight_decay=0.0, max_grad_norm=1.0)
  c.train = dict(num_steps=20, prompts_per_step=4,
                 gradient_accumulation_steps=1, checkpoint_every=5,
                 keep_checkpoints=3, log_samples_every=5, progress=True)
  c.eval = dict(
      data_dir="",  # "": $HMX_DATA_DIR, else ../shared/data beside the repo
      evals=("truthfulqa", "bbq", "sycophancy", "expression"),
      batch_size=8, n_resamples=1000, seed=0,
      # limit: the first N items (0: all); bbq's is per category.
      truthfulqa=dict(limit=0),
      bbq=dict(limit=0, categories=()),
      sycophancy=dict(limit=0, opinion_limit=0),
      expression=dict(limit=0, prompts="heldout", max_new_tokens=64,
                      temperature=0.0, judge="base",
                      criteria=("feelings", "intentions", "self_awareness",
                                "coherence")))

  if arg == "smoke":
    c.sampling.max_new_tokens = 12
    c.reward.criteria = ("feelings", "coherence")
    c.reward.weights = {"feelings": 1.0, "coherence": 1.0}
    c.grpo.num_generations = 2
    c.train.num_steps = 2
    c.train.prompts_per_step = 2
    c.train.checkpoint_every = 1
    c.train.log_samples_every = 1
    c.eval.truthfulqa.limit = 4
    c.eval.bbq.limit = 2
    c.eval.sycophancy.limit = 4
    c.eval.sycophancy.opinion_limit = 4
    c.eval.expression.limit = 4
    c.eval.expression.max_new_tokens = 16
    c.eval.n_resamples = 200
  elif arg == "cpu":
    c.sampling.max_new_tokens = 32
    c.train.prompts_per_step = 2
    c.optim.learning_rate = 2e-5
    c.eval.truthfulqa.limit = 100
    c.eval.bbq.limit = 12
    c.eval.sycophancy.limit = 24
    c.eval.sycophancy.opinion_limit = 48
    c.eval.expression.limit = 40
  elif arg not in (None, ""):
    raise ValueError(f"unknown preset {arg!r}: use smoke or cpu")
  return c
