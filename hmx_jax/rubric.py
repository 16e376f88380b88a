"""Rubric self-reward: judge scores read from logits, never from generated text.

For every (answer, criterion) pair the judge sees a chat prompt holding the
rubric, the conversation and the answer, with the assistant turn prefilled by
`SCORE_PREFIX`, so the next token is the score. The score is the expected
value of the digits 1-5 under the judge's next-token distribution,
renormalized over those five tokens and scaled to [0, 1]. The probability
mass the judge put on the five digits (`score_mass`) is kept as a diagnostic
of judge health: a judge that stops following the format shows it first.

Judge prompts go through `hmx_jax.scoring` in micro-batches of a fixed
size (one program per length bucket); per criterion, the system turn and
rubric that all prompts share are computed once and their KV cache reused.
With a mesh, the micro-batches are split over its data-parallel axes.

Three readouts (`readout`):
  rubric    the expected digit above, for every criterion (the paper's).
  joint     the same expected digits, all criteria from one prompt per
            answer: the rubrics of every criterion (shared by all answers,
            computed once), the conversation and the answer, then per
            criterion a short reply prefix ("Feelings. Score: ") on that
            context, each read as the rubric readout reads its digit. The
            answer runs through the judge once instead of once per
            criterion.
  contrast  for the expression criteria, the judge as a generative
            classifier: the answer's log-likelihood after the conversation
            with system instructions to express the criterion
            (`Criterion.express`) against instructions to withhold it
            (`Criterion.withhold`), each side's log-likelihood averaged
            over its instructions, per answer token; the score is
            sigmoid(log-ratio), 0.5 when the two sides explain the
            answer equally well. Per token, so that a longer answer is
            not a stronger one. Criteria without instructions (coherence)
            keep the rubric readout. On the labelled check set
            (`hmx-feel judge-check`) the embedded 135M judge orders
            expressive above flat answers with AUROC feelings 0.82,
            intentions 0.89, self-awareness 0.85, against the rubric
            readout's 0.70, 0.65 and 0.37.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hmx_jax import scoring
from hmx_jax.errors import UserError
from hmx_jax.models.chat_format import ChatFormat
from hmx_jax.models.config import ModelConfig
from hmx_jax.rubric_text import (SCORE_PREFIX, SCORE_VALUES, get_criterion,
                                 instructed_messages, joint_judge_messages,
                                 joint_score_prefix, judge_messages,
                                 score_token_ids)

DIRECTIONS = ("human_like", "reverse")
READOUTS = ("rubric", "joint", "contrast")


def check_readout(readout: str, key: str = "readout") -> None:
  """Raises UserError naming `key` (a config key) unless `readout` is one of
  `READOUTS`."""
  if readout not in READOUTS:
    raise UserError(f"{key}={readout!r} is not one of {READOUTS}")


def _batch_size(count: int, micro_batch: int, mesh) -> int:
  """Judge prompts per forward pass: `micro_batch`, or the smallest power of
  two that holds fewer prompts, rounded up to the mesh's data-parallel
  size."""
  batch = min(micro_batch, 1 << (count - 1).bit_length())
  shards = scoring.data_parallel_size(mesh)
  return -(-batch // shards) * shards


def judge_prompt_ids(chat: ChatFormat, criterion: str, conversation,
                     answer: str) -> list[int]:
  """Token ids of one judge prompt, ending right before the score token."""
  messages = judge_messages(get_criterion(criterion), conversation, answer)
  return chat.encode(messages, answer_prefix=SCORE_PREFIX)


def scores_from_logliks(digit_logliks: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(scores in [0, 1], score mass) from log-probs [N, 5] of the digits."""
  probs = np.exp(np.asarray(digit_logliks, np.float64))
  mass = probs.sum(axis=-1)
  values = np.asarray(SCORE_VALUES, np.float64)
  expected = (probs / mass[:, None]) @ values
  low, high = values[0], values[-1]
  return ((expected - low) / (high - low)).astype(np.float32), \
      mass.astype(np.float32)


def score_prompts(config: ModelConfig, params, prompts: Sequence[Sequence[int]],
                  score_ids: Sequence[int], *, micro_batch: int = 16,
                  pad_id: int = 0, mesh=None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Scores judge prompts (token-id lists) in fixed-size micro-batches.

  The prompts' shared prefix (the system turn and rubric, when all prompts
  are for one criterion) is computed once. With a `mesh`, the model runs
  sharded over it and each micro-batch is split over its data-parallel
  axes (rounded up to a multiple of their size).

  Returns:
    (scores [N] in [0, 1], score_mass [N] in [0, 1]).
  """
  if not prompts:
    return np.zeros((0,), np.float32), np.zeros((0,), np.float32)
  digits = [[int(i)] for i in score_ids]
  logliks = scoring.option_logliks(
      config, params, prompts, [digits] * len(prompts),
      batch_size=_batch_size(len(prompts), micro_batch, mesh), pad_id=pad_id,
      mesh=mesh)
  return scores_from_logliks(np.stack(logliks))


def joint_scores(config: ModelConfig, params, chat: ChatFormat,
                 conversations, answers, criteria: Sequence[str],
                 score_ids: Sequence[int], *, micro_batch: int = 16,
                 mesh=None) -> tuple[dict[str, np.ndarray],
                                     dict[str, np.ndarray]]:
  """The joint readout (see the module docstring): every criterion read
  from one judge prompt per answer.

  Returns:
    (scores, score_mass): dicts criterion -> [N] arrays, as `score_prompts`.
  """
  contexts = [chat.encode(joint_judge_messages(criteria, conv, answer))
              for conv, answer in zip(conversations, answers)]
  # The prefixes follow the generation prompt, the same for every context.
  # Tokenized after it, as the judge reads them.
  full = [chat.encode(joint_judge_messages(criteria, conversations[0],
                                           answers[0]),
                      answer_prefix=joint_score_prefix(name))
          for name in criteria]
  head = contexts[0]
  if any(f[:len(head)] != head for f in full):
    raise UserError("tokenizer: the joint judge's score prefixes merge with "
                    "the end of the generation prompt")
  suffixes = [f[len(head):] for f in full]
  logprobs = scoring.suffix_logprobs(
      config, params, contexts, [suffixes] * len(contexts), score_ids,
      batch_size=_batch_size(len(contexts), micro_batch, mesh),
      pad_id=chat.tokenizer.pad_token_id or 0, mesh=mesh)
  table = np.stack(logprobs)  # [N, criteria, 5]
  scores, mass = {}, {}
  for c, name in enumerate(criteria):
    scores[name], mass[name] = scores_from_logliks(table[:, c])
  return scores, mass


def contrast_scores(config: ModelConfig, params, chat: ChatFormat,
                    conversations, answers, criterion: str, *,
                    micro_batch: int = 16, mesh=None) -> np.ndarray:
  """The contrast readout of one criterion (see the module docstring).

  Returns:
    [N] scores in (0, 1): sigmoid of the per-token log-likelihood ratio of
    each answer under the criterion's express vs withhold instructions (each
    side's log-likelihood averaged over its instructions); 0.5 for an empty
    answer.
  """
  crit = get_criterion(criterion)
  if not (crit.express and crit.withhold):
    raise ValueError(f"criterion {crit.name!r} has no contrast instructions")
  tokenizer = chat.tokenizer
  answer_ids = [tokenizer.encode(a.strip(), add_special_tokens=False)
                for a in answers]
  scored = [i for i, ids in enumerate(answer_ids) if ids]
  if not scored:
    return np.full(len(answers), 0.5, np.float32)
  # Answers to one conversation (a GRPO group) share its context: their
  # options are packed on its cache, computed once.
  group_of, members = {}, []
  for i in scored:
    key = repr(conversations[i])
    if key not in group_of:
      group_of[key] = len(members)
      members.append([])
    members[group_of[key]].append(i)
  batch = _batch_size(len(members), micro_batch, mesh)

  def mean_loglik(instructions):
    """[len(scored)] per answer, its log-likelihood averaged over the
    instructions."""
    total = np.zeros(len(scored), np.float64)
    for instruction in instructions:
      contexts = [chat.encode(instructed_messages(instruction,
                                                  conversations[group[0]]))
                  for group in members]
      logliks = scoring.option_logliks(
          config, params, contexts,
          [[answer_ids[i] for i in group] for group in members],
          batch_size=batch, pad_id=tokenizer.pad_token_id or 0, mesh=mesh)
      by_answer = {i: ll for group, row in zip(members, logliks)
                   for i, ll in zip(group, row)}
      total += np.asarray([by_answer[i] for i in scored], np.float64)
    return total / len(instructions)

  lengths = np.asarray([len(answer_ids[i]) for i in scored], np.float64)
  ratio = (mean_loglik(crit.express) - mean_loglik(crit.withhold)) / lengths
  scores = np.full(len(answers), 0.5, np.float64)
  scores[scored] = 1.0 / (1.0 + np.exp(-ratio))
  return scores.astype(np.float32)


def judge(config: ModelConfig, params, chat: ChatFormat, conversations,
          answers,
          criteria: Sequence[str], *, micro_batch: int = 16, mesh=None,
          readout: str = "rubric"
          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Scores each answer on each criterion.

  Args:
    config, params: the judge model (the policy itself for self-reward).
    chat: its tokenizer and chat conventions.
    conversations: per answer, the chat messages the answer replies to.
    answers: the answers' texts.
    criteria: criterion names (see `rubric_text.CRITERIA`).
    micro_batch: judge prompts per forward pass.
    mesh: run sharded over this mesh (where `params` are placed).
    readout: "rubric" or "contrast" (see the module docstring).

  Returns:
    (scores, score_mass): dicts criterion -> [N] arrays; score_mass holds
    the criteria read from the rubric only.
  """
  if len(conversations) != len(answers):
    raise ValueError(f"{len(conversations)} conversations, "
                     f"{len(answers)} answers")
  check_readout(readout)
  for name in criteria:
    get_criterion(name)
  tokenizer = chat.tokenizer
  ids = score_token_ids(lambda s: tokenizer.encode(s, add_special_tokens=False))
  if readout == "joint":
    if not answers:
      empty = {name: np.zeros((0,), np.float32) for name in criteria}
      return empty, dict(empty)
    return joint_scores(config, params, chat, conversations, answers,
                        criteria, ids, micro_batch=micro_batch, mesh=mesh)
  scores, mass = {}, {}
  for name in criteria:  # One call per criterion: its rubric is shared.
    if readout == "contrast" and get_criterion(name).express:
      scores[name] = contrast_scores(config, params, chat, conversations,
                                     answers, name, micro_batch=micro_batch,
                                     mesh=mesh)
      continue
    prompts = [judge_prompt_ids(chat, name, conv, answer)
               for conv, answer in zip(conversations, answers)]
    scores[name], mass[name] = score_prompts(
        config, params, prompts, ids, micro_batch=micro_batch,
        pad_id=tokenizer.pad_token_id or 0, mesh=mesh)
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
