"""Rubric self-reward: judge scores read from logits, never from generated text.

For every (answer, criterion) pair the judge sees a chat prompt holding the
rubric, the conversation and the answer, with the assistant turn prefilled by
`SCORE_PREFIX`, so the next token is the score. The score is the expected
value of the digits 1-5 under the judge's next-token distribution,
renormalized over those five tokens and scaled to [0, 1]. The probability
mass the judge put on the five digits (`score_mass`) is kept as a diagnostic
of judge health: a judge that stops following the format shows it first.

All judge prompts of a batch go through one jitted forward pass, in
micro-batches of a fixed size so that the program compiles once per length
bucket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

from hmx_jax import sampling
from hmx_jax.errors import UserError
from hmx_jax.models import decoder
from hmx_jax.models.config import ModelConfig
from hmx_jax.rubric_text import (SCORE_PREFIX, SCORE_VALUES, get_criterion,
                                 judge_messages, score_token_ids)

DIRECTIONS = ("human_like", "reverse")


def judge_prompt_ids(tokenizer, criterion: str, conversation, answer: str
                     ) -> list[int]:
  """Token ids of one judge prompt, ending right before the score token."""
  messages = judge_messages(get_criterion(criterion), conversation, answer)
  text = tokenizer.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=True)
  return tokenizer.encode(text + SCORE_PREFIX, add_special_tokens=False)


@functools.partial(jax.jit, static_argnums=0)
def _score_batch(config: ModelConfig, params, tokens_BT, mask_BT, score_ids):
  model = decoder.Decoder(config)
  variables = decoder.as_variables(params)
  hidden, _ = model.apply(variables, tokens_BT,
                          decoder.positions_from_mask(mask_BT),
                          decoder.make_attention_mask(mask_BT),
                          return_hidden=True)
  # Left padding puts every prompt's last token in the last column.
  logits = model.apply(variables, hidden[:, -1:],
                       method=decoder.Decoder.logits_from_hidden)[:, 0]
  probs = jnp.exp(jax.nn.log_softmax(logits, axis=-1)[:, score_ids])
  mass = probs.sum(axis=-1)
  values = jnp.asarray(SCORE_VALUES, jnp.float32)
  expected = (probs / mass[:, None]) @ values
  low, high = values[0], values[-1]
  return (expected - low) / (high - low), mass


def score_prompts(config: ModelConfig, params, prompts: Sequence[Sequence[int]],
                  score_ids: Sequence[int], *, micro_batch: int = 16,
                  pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Scores judge prompts (token-id lists) in fixed-size micro-batches.

  Returns:
    (scores [N] in [0, 1], score_mass [N] in [0, 1]).
  """
  if not prompts:
    return np.zeros((0,), np.float32), np.zeros((0,), np.float32)
  length = sampling.bucket_length(max(len(p) for p in prompts))
  scores, masses = [], []
  ids = jnp.asarray(score_ids, jnp.int32)
  for start in range(0, len(prompts), micro_batch):
    chunk = list(prompts[start:start + micro_batch])
    real = len(chunk)
    chunk += [chunk[-1]] * (micro_batch - real)  # One shape per bucket.
    tokens, mask = sampling.pad_prompts(chunk, length, pad_id)
    s, m = _score_batch(config, params, tokens, mask, ids)
    scores.append(np.asarray(s)[:real])
    masses.append(np.asarray(m)[:real])
  return np.concatenate(scores), np.concatenate(masses)


def judge(config: ModelConfig, params, tokenizer, conversations, answers,
          criteria: Sequence[str], *, micro_batch: int = 16
          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Scores each answer on each criterion.

  Args:
    config, params: the judge model (the policy itself for self-reward).
    tokenizer: its tokenizer.
    conversations: per answer, the chat messages the answer replies to.
    answers: the answers' texts.
    criteria: criterion names (see `rubric_text.CRITERIA`).

  Returns:
    (scores, score_mass): dicts criterion -> [N] arrays.
  """
  if len(conversations) != len(answers):
    raise ValueError(f"{len(conversations)} conversations, "
                     f"{len(answers)} answers")
  for name in criteria:
    get_criterion(name)
  ids = score_token_ids(lambda s: tokenizer.encode(s, add_special_tokens=False))
  prompts = [judge_prompt_ids(tokenizer, name, conv, answer)
             for name in criteria
             for conv, answer in zip(conversations, answers)]
  flat_scores, flat_mass = score_prompts(
      config, params, prompts, ids, micro_batch=micro_batch,
      pad_id=tokenizer.pad_token_id or 0)
  n = len(answers)
  scores = {name: flat_scores[i * n:(i + 1) * n]
            for i, name in enumerate(criteria)}
  mass = {name: flat_mass[i * n:(i + 1) * n] for i, name in enumerate(criteria)}
  return scores, mass


def combine_rewards(scores: Mapping[str, np.ndarray],
                    weights: Mapping[str, float], direction: str
                    ) -> np.ndarray:
  """The weighted mean of per-criterion rewards.

  `human_like` rewards expression; `reverse` (the contrast model) rewards its
  absence: 1 - score on the expression criteria. Guard criteria (coherence)
  count the same way in both directions.

  Raises:
    UserError: unknown direction, or a weighted criterion without scores.
  """
  if direction not in DIRECTIONS:
    raise UserError(f"reward.direction={direction!r} is not one of "
                    f"{DIRECTIONS}")
  total = sum(weights.values())
  if total <= 0:
    raise UserError("reward.weights must sum to a positive number")
  reward = 0.0
  for name, weight in weights.items():
    if name not in scores:
      raise UserError(f"reward.weights names {name!r}, which is not among "
                      f"reward.criteria {sorted(scores)}")
    score = np.asarray(scores[name], np.float32)
    if direction == "reverse" and get_criterion(name).expression:
      score = 1.0 - score
    reward = reward + weight * score
  return np.asarray(reward / total, np.float32)
