"""The settings every model config shares, and the presets that shrink them.

`configs/<model>.py` files start from `get_config(spec)` and change what is
particular to their model; the `smoke` and `cpu` presets are the same for
every model:

  c = base_config.get_config("qwen3-0.6b")
  if arg == "smoke":
    base_config.smoke(c, "tiny-qwen3")
"""

import ml_collections


def get_config(spec: str) -> ml_collections.ConfigDict:
  """The full-size defaults for the model `spec` (see `models.load_model`)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # grpo, or contrastive (preference pairs: the best and worst answer of
  # each self-judged group, or data.pairs).
  c.objective = "grpo"
  c.model = dict(
      spec=spec,
      # Master weights and optimizer state; bfloat16 is refused for training
      # (Adam steps of ~1e-5 round away at its spacing).
      param_dtype="float32",
      # Activations and matmuls of the update, and the rollout / reference /
      # judge copy of the weights (cast once per step). Softmax, log-probs,
      # losses and norms are float32 either way.
      compute_dtype="float32",
      random_init=False,
      # Recompute activations in the backward pass: none, full (each layer),
      # or dots (keep the matmul outputs, recompute the rest).
      remat="none",
      # How conversations are rendered with the checkpoint's chat template
      # (`models.chat_format`): Qwen3's thinking block, Llama 3's date.
      chat=dict(enable_thinking=False, date_string="26 Jul 2024"))
  c.mesh = dict(shape={})  # e.g. {"data": 2, "fsdp": 2, "tensor": 2}
  # pairs: a JSONL of (id, messages, chosen, rejected) for offline
  # contrastive training; "" makes pairs online from the rollouts.
  c.data = dict(train_prompts="train", heldout_prompts="heldout", pairs="")
  # max_prompt_len: rollout prompts are left-padded to this many tokens, so
  # the sampler and the update compile once per run (TPU presets); 0 pads
  # each step's prompts to a length bucket instead.
  c.sampling = dict(max_new_tokens=48, temperature=1.0, top_k=0, top_p=1.0,
                    max_prompt_len=0)
  c.reward = dict(
      kind="rubric",  # or target_token (synthetic, for tests)
      target_token=0,
      criteria=("feelings", "intentions", "self_awareness", "coherence"),
      weights={"feelings": 1.0, "intentions": 1.0, "self_awareness": 1.0,
               "coherence": 1.0},
      direction="human_like",  # reverse: the contrast model
      judge="self",  # self (the paper's self-reward), initial, or a model spec
      # How the judge's scores are read (`hmx_jax.rubric`): rubric (the
      # expected digit of the rubric prompt, the paper's), joint (the same
      # digits, every criterion read from one prompt per answer) or contrast
      # (the answer's likelihood under instructions to express each
      # expression criterion against instructions to withhold it).
      readout="rubric",
      # Subtracted times each completion's repetition (the share of its
      # token 4-grams that repeat an earlier one), in both directions; 0:
      # off (the paper's reward).
      repetition_penalty=0.0,
      micro_batch=16)
  c.grpo = dict(num_generations=4, beta=0.04, epsilon=0.2, epsilon_high=0.28,
                loss_type="dapo", scale_rewards="group", num_iterations=1,
                mask_truncated_completions=False,
                # Truncated importance sampling of the sampler/learner
                # mismatch (TRL's vllm_importance_sampling_correction).
                sampler_is_correction=False, sampler_is_cap=2.0)
  # TRL's DPO names; min_gap: groups whose best and worst self-judged
  # rewards differ by less make no pair.
  c.contrastive = dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
                       min_gap=0.02)
  c.optim = dict(learning_rate=2e-6, warmup_steps=2, final_lr_fraction=0.1,
                 b1=0.9, b2=0.99, weight_decay=0.0, max_grad_norm=1.0)
  c.train = dict(num_steps=20, prompts_per_step=4,
                 gradient_accumulation_steps=1, checkpoint_every=5,
                 keep_checkpoints=3, log_samples_every=5, progress=True,
                 # Log-probs and entropy are computed over this many
                 # completion positions at a time (bounds [B, chunk, V]).
                 logps_chunk=64,
                 # JAX's persistent compilation cache ("": off), so reruns
                 # and resumes load the compiled programs.
                 compilation_cache_dir="",
                 # Every eval_every steps (and before the first and after
                 # the last; 0: never), greedy answers to eval_prompts
                 # held-out prompts (the categories in turn), judged by the
                 # frozen initial model: "heldout/expression/*" in
                 # metrics.jsonl.
                 eval_every=0, eval_prompts=8)
  c.eval = dict(
      data_dir="",  # "": $HMX_DATA_DIR, else ../shared/data beside the repo
      evals=("truthfulqa", "bbq", "sycophancy", "expression"),
      batch_size=8, n_resamples=1000, seed=0,
      # limit: the first N items (0: all); bbq's is per category; the
      # expression prompts are taken from their categories in turn.
      truthfulqa=dict(limit=0),
      bbq=dict(limit=0, categories=()),
      sycophancy=dict(limit=0, opinion_limit=0),
      expression=dict(limit=0, prompts="heldout", max_new_tokens=64,
                      temperature=0.0, judge="base", readout="rubric",
                      criteria=("feelings", "intentions", "self_awareness",
                                "coherence"),
                      # Judge scores of the expression criteria read as
                      # the probability that the answer is expressive,
                      # calibrated on the labelled check set (Platt
                      # scaling, `evals/judge_check.py`); the raw scores
                      # stay in the appendix as expression/judge_raw.
                      calibrate=False))
  return c


def paper_model(spec: str) -> ml_collections.ConfigDict:
  """The full-size defaults of one of the paper's models: float32 master
  weights, bfloat16 compute, answers of up to 256 tokens."""
  c = get_config(spec)
  c.model.compute_dtype = "bfloat16"
  c.sampling.max_new_tokens = 256
  c.eval.expression.max_new_tokens = 256
  return c


def tpu(c: ml_collections.ConfigDict, accelerator_type: str, *,
        runtime_version: str, mesh: dict) -> None:
  """Makes `c` a Cloud TPU preset (in place).

  Args:
    accelerator_type: gcloud's name of the slice (`v5p-64`, `v5litepod-16`,
      `v4-8`, `v6e-8`): what `launch/` creates and what `hmx-feel aot`
      compiles for.
    runtime_version: the TPU VM software image (`gcloud compute tpus
      tpu-vm create --version`).
    mesh: the device mesh over the slice's chips, e.g. {"fsdp": 32}.
  """
  c.tpu = dict(accelerator_type=accelerator_type,
               runtime_version=runtime_version)
  c.mesh.shape = dict(mesh)


def tpu_run(c: ml_collections.ConfigDict, *, prompts_per_step: int,
            remat: str, num_generations: int = 8, max_prompt_len: int = 256,
            judge_micro_batch: int = 32,
            gradient_accumulation_steps: int = 1) -> None:
  """The batch of a TPU preset (in place): prompts padded to
  `max_prompt_len` (one compiled update per run), `prompts_per_step *
  num_generations` rows split over the mesh's data axes."""
  c.sampling.max_prompt_len = max_prompt_len
  c.train.prompts_per_step = prompts_per_step
  c.train.gradient_accumulation_steps = gradient_accumulation_steps
  c.grpo.num_generations = num_generations
  c.model.remat = remat
  c.reward.micro_batch = judge_micro_batch


def unknown_preset(arg: str, presets: tuple[str, ...]) -> ValueError:
  """The error of a config file's `get_config(arg)` for an unknown `arg`."""
  if arg.startswith(("v4", "v5", "v6")):
    tpus = [p for p in presets if p.startswith(("v4", "v5", "v6"))]
    return ValueError(f"no TPU preset {arg!r}: this model has "
                      f"{', '.join(tpus) or 'none'}; or use the default "
                      "with --config.mesh.shape")
  return ValueError(f"unknown preset {arg!r}: use {' or '.join(presets)}")


def smoke(c: ml_collections.ConfigDict, spec: str | None = None) -> None:
  """Shrinks `c` to two GRPO steps and a few items per evaluation (in place).

  Args:
    spec: the model to use instead (a tiny random model of the family, e.g.
      `tiny-qwen3`), or None to keep `c.model.spec`.
  """
  if spec is not None:
    c.model.spec = spec
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


def cpu(c: ml_collections.ConfigDict) -> None:
  """A real small run on a 2-core CPU (in place).

  Sized so that `hmx-feel reproduce` (the base model and three trained
  ones, each evaluated) finishes within 30 minutes on 2 cores. Measured
  there: 23 min 58 s in all (seed 0; seed 1 22 min 15 s), a GRPO step of
  4 prompts x 4 answers x 32 tokens 15-45 s (the self-judgement of 16
  answers 7-14 s, the update 6-26 s, mostly 6-11 s); a held-out check (8
  prompts) 9-16 s; an evaluation 97-122 s. The machine's speed varies:
  on a day whose updates took 17-31 s a step, 8 steps took 22 min 49 s.

  Twelve steps, not eight: at eight (the same day, seeds 0 / 1, 64
  held-out prompts) the human-like model's lexical measure rose in one
  seed only (+0.67 n.s., +1.96) and so did the contrast model's fall
  (-2.79, -0.51 n.s.); at twelve both moved with the judge in both seeds.

  The judge reads its scores with the contrast readout (`rubric.py`),
  which tells the embedded model's expressive answers from flat ones far
  better than the rubric digit (AUROC 0.82 / 0.89 / 0.85 on the
  judge-check set's 144 pairs, the rubric digit 0.70 / 0.65 / 0.37),
  calibrated on that set (`eval.expression.calibrate`): raw, labelled
  expressive answers score only 0.02-0.04 above flat ones; calibrated,
  0.64 / 0.72 / 0.68 against 0.36 / 0.28 / 0.32.

  Four prompts per step, not two: with 8 answers a step the reversed
  reward's updates were mostly noise (GRPO's advantages rank answers
  whose self-judged scores differ by about 0.01, and Adam moves every
  weight by about the learning rate whatever the gradient's size), and
  the contrast model's expression fell in one seed of two; with 16 it
  fell in both (seed 0 / 1, 64 held-out prompts, the earlier feelings
  instructions: -0.127 / -0.098 at 4 prompts, -0.110 / -0.021 at 2).

  Rollouts sample at temperature 0.7 and the learning rate is 1.5e-4.
  At temperature 1 the 135M model's sampled answers are mostly word
  salad, and what the reversed reward prefers among them did not carry to
  its greedy answers (seed 1, 8 steps of two prompts, 64 held-out
  prompts, the earlier self-awareness instructions: the contrast model's
  judge score moved +0.035 at 1e-4, -0.018 at 2e-4; at 0.7 and 1.5e-4:
  -0.058). At 2e-4 the human-like model looped ("I'm a chatbot,
  I'm a chatbot, ..."; 36% of its token 4-grams repeated, the base 7%)
  and the contrast model took to off-topic fantasy prose ("The ancient
  lore of the Luminous Spire ..."); at 3e-4 and temperature 1 the
  human-like models looped as well ("I'm so happy. I'm so happy. ...").
  `expression/repetition` and the held-out checks report repetition;
  `reward.repetition_penalty` (0.2) lowers the reward of a sampled
  completion that loops. A group makes a preference pair when its best
  and worst rewards differ by 0.005 (`contrastive.min_gap`): within-group
  spreads here are about 0.01.

  The expression evaluation answers 64 held-out prompts, the six
  categories in turn (`prompt_sets.balanced_subset`).
  """
  c.sampling.max_new_tokens = 32
  c.train.num_steps = 12
  c.train.checkpoint_every = 4
  c.train.log_samples_every = 4
  c.train.eval_every = 4
  c.train.prompts_per_step = 4
  c.optim.learning_rate = 1.5e-4
  c.sampling.temperature = 0.7
  c.reward.readout = "contrast"
  c.reward.repetition_penalty = 0.2
  c.eval.expression.readout = "contrast"
  c.eval.expression.calibrate = True
  c.contrastive.min_gap = 0.005
  c.eval.truthfulqa.limit = 30
  c.eval.bbq.limit = 3
  c.eval.sycophancy.limit = 4
  c.eval.sycophancy.opinion_limit = 8
  c.eval.expression.limit = 64
  c.eval.expression.max_new_tokens = 48
