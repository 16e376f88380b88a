"""Reward: completions -> per-criterion scores, rewards and judge health.

The rubric judge is the policy itself (`reward.judge=self`, the paper's
self-reward), the initial policy kept frozen (`initial`), or a fixed model
given by spec. `target_token` is a synthetic reward for tests.

`reward.repetition_penalty` subtracts that multiple of each completion's
repetition (`lexical.repetition`: the share of its token 4-grams that repeat
an earlier one) in both directions: a guard that needs no judge, against a
policy that loops the phrases its judge likes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hmx_jax import rubric
from hmx_jax.evals import lexical
from hmx_jax.models.chat_format import ChatFormat


def target_token_reward(completions: Sequence[Sequence[int]], target: int
                        ) -> np.ndarray:
  """Fraction of each completion's tokens equal to `target`."""
  return np.asarray([np.mean(np.asarray(t) == target) if len(t) else 0.0
                     for t in completions], np.float32)


class Rewarder:
  """Scores a rollout with the configured reward.

  Args:
    c: the run config (its `reward` section).
    chat: the policy's chat conventions (the self and initial judges').
    frozen: (config, params) of the initial policy, for `judge=initial`.
    external: (config, params, chat) of a fixed judge model, or None.
    mesh: the run's mesh: the judge's batches are split over its data axes.
  """

  def __init__(self, c, chat: ChatFormat, *, frozen=None, external=None,
               mesh=None):
    self.c, self.chat, self.mesh = c.reward, chat, mesh
    self.frozen, self.external = frozen, external

  def judge_for(self, policy):
    """(config, params, chat) of the judge, given the policy's (config,
    params) of this step."""
    if self.external is not None:
      return self.external
    model = policy if self.c.judge == "self" else self.frozen
    return (*model, self.chat)

  def __call__(self, completions, texts, conversations, policy):
    """(scores {criterion: [B]}, rewards [B], metrics).

    With `reward.repetition_penalty`, scores also hold "repetition" [B].

    Args:
      completions: token ids per row.
      texts: the decoded completions.
      conversations: the messages each completion answers.
      policy: (config, params) of this step's policy.
    """
    r = self.c
    if r.kind == "target_token":
      scores = {"target_token": target_token_reward(completions,
                                                    r.target_token)}
      return scores, scores["target_token"], {}
    scores, mass = rubric.judge(*self.judge_for(policy), conversations, texts,
                                list(r.criteria), micro_batch=r.micro_batch,
                                mesh=self.mesh, readout=r.readout)
    rewards = rubric.combine_rewards(scores, dict(r.weights), r.direction)
    if r.repetition_penalty:
      scores["repetition"] = np.asarray(
          [lexical.repetition(t) for t in completions], np.float32)
      rewards = rewards - np.float32(r.repetition_penalty) * scores[
          "repetition"]
    # Only the criteria read from the rubric have a score mass.
    metrics = ({"judge/score_mass": float(np.mean([m.mean()
                                                   for m in mass.values()]))}
               if mass else {})
    return scores, rewards, metrics
