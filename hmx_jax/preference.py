"""Preference pairs for the contrastive objective, as learner batches.

Online (the default): from each self-judged GRPO group, the highest- and
lowest-reward completions make a pair (the reward's direction decides which
is chosen); groups whose reward gap is below `contrastive.min_gap` carry
no preference and are skipped. Offline: pairs read from `data.pairs`
(`hmx_jax.data.pairs`), `prompts_per_step` of them per step, chosen by
(seed, step).

A batch always holds one slot per group (online) or per pair (offline), so
its shapes do not change from step to step; skipped slots have weight 0.
"""

from __future__ import annotations

import numpy as np

from hmx_jax import rollout, sampling
from hmx_jax.models.chat_format import ChatFormat
from hmx_jax.objectives import contrastive

SIDES = ("chosen", "rejected")


def _sides(tokens, mask, completion_mask, chosen, rejected):
  batch = {}
  for side, rows in zip(SIDES, (chosen, rejected)):
    batch[f"{side}/tokens"] = tokens[rows]
    batch[f"{side}/mask"] = mask[rows]
    batch[f"{side}/completion_mask"] = completion_mask[rows]
  return batch


def online_batch(ro: rollout.Rollout, rewards, *, num_generations: int,
                 min_gap: float, mask_truncated: bool = False
                 ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """(pairs batch without reference log-probs, metrics) from a rollout."""
  rewards = np.asarray(rewards)
  chosen, rejected, skipped = contrastive.select_pairs(
      rewards, num_generations, min_gap)
  kept, groups = len(chosen), len(rewards) // num_generations
  gaps = rewards[chosen] - rewards[rejected]
  weights = np.zeros(groups, np.float32)
  weights[:kept] = 1.0
  # Padding slots repeat row 0 with weight 0.
  pad = np.zeros(groups - kept, np.int64)
  chosen = np.concatenate([chosen, pad]).astype(np.int64)
  rejected = np.concatenate([rejected, pad]).astype(np.int64)
  completion_mask = ro.mask.astype(np.float32)
  if mask_truncated:
    completion_mask = completion_mask * (~ro.truncated)[:, None]
  seq = ro.sequences()
  batch = _sides(seq["tokens"], seq["mask"], completion_mask, chosen,
                 rejected)
  batch["weights"] = weights
  return batch, {"pairs/skipped_ratio": float(skipped),
                 "pairs/reward_gap": float(gaps.mean()) if kept else 0.0}


def _completion_ids(chat: ChatFormat, messages, answer: str, stop_ids):
  """The tokens the template writes for `answer` after the prompt, up to and
  including the first end-of-turn token."""
  tokenizer = chat.tokenizer
  prompt = chat.encode(messages)
  whole = chat.encode(list(messages) + [{"role": "assistant",
                                         "content": answer}],
                      add_generation_prompt=False)
  if whole[:len(prompt)] == prompt and len(whole) > len(prompt):
    ids = whole[len(prompt):]
  else:  # A template that renders the prompt differently once answered.
    ids = tokenizer.encode(answer, add_special_tokens=False) + [stop_ids[0]]
  for i, token in enumerate(ids):
    if token in stop_ids:
      return prompt, ids[:i + 1]
  return prompt, ids


def offline_batch(pairs, indices, chat: ChatFormat, stop_ids, pad_id: int
                  ) -> dict[str, np.ndarray]:
  """A pairs batch (without reference log-probs) of `pairs[indices]`."""
  prompts, completions = [], {side: [] for side in SIDES}
  for i in indices:
    pair = pairs[i]
    for side in SIDES:
      prompt, ids = _completion_ids(chat, pair.messages, getattr(pair, side),
                                    stop_ids)
      completions[side].append(ids)
    prompts.append(prompt)
  P = sampling.bucket_length(max(map(len, prompts)), half_steps=True)
  N = sampling.bucket_length(max(len(ids) for side in SIDES
                                 for ids in completions[side]), minimum=8)
  prompt_BP, prompt_mask_BP = sampling.pad_prompts(prompts, P, pad_id)
  batch = {}
  for side in SIDES:
    tokens = np.full((len(prompts), N), pad_id, np.int32)
    mask = np.zeros((len(prompts), N), np.int32)
    for row, ids in enumerate(completions[side]):
      tokens[row, :len(ids)] = ids
      mask[row, :len(ids)] = 1
    batch[f"{side}/tokens"] = np.concatenate([prompt_BP, tokens], axis=1)
    batch[f"{side}/mask"] = np.concatenate([prompt_mask_BP, mask], axis=1)
    batch[f"{side}/completion_mask"] = mask.astype(np.float32)
  batch["weights"] = np.ones(len(prompts), np.float32)
  return batch
