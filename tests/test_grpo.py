"""GRPO objective against a hand-written NumPy transcription of TRL's formulas.

The reference below shares no code with `hmx_jax.objectives.grpo`. It follows
trl 1.16 `GRPOTrainer._generate_and_score_completions` (advantages) and
`_compute_loss` (loss, metrics) in float64, and its gradient w.r.t. logps is
derived by hand, so the JAX gradient is checked exactly rather than against
finite differences.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmx_jax.errors import UserError
from hmx_jax.objectives import grpo

NUM_GENERATIONS = 4
NUM_PROMPTS = 4
BATCH = NUM_GENERATIONS * NUM_PROMPTS
LENGTH = 12
EPSILON = 0.2
EPSILON_HIGH = 0.28
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALES = ("group", "batch", "none")

# ---------------------------------------------------------------------------
# NumPy reference (float64).


def np_std(x, axis=None):
  return np.std(x, axis=axis, ddof=1)  # torch.std / TRL nanstd: Bessel.


def np_advantages(rewards, num_generations, scale_rewards):
  grouped = rewards.astype(np.float64).reshape(-1, num_generations)
  mean = np.repeat(grouped.mean(axis=1), num_generations)
  if scale_rewards == "group":
    std = np.repeat(np_std(grouped, axis=1), num_generations)
  elif scale_rewards == "batch":
    std = np.full(rewards.shape, np_std(rewards.astype(np.float64)))
  advantages = rewards - mean
  if scale_rewards != "none":
    advantages = advantages / (std + 1e-4)
  return advantages


def np_loss_and_grad(logps, old_logps, ref_logps, advantages, mask, *,
                     beta, loss_type, max_completion_length=None,
                     num_items_in_batch=None, token_weights=None):
  """Returns (loss, d loss / d logps [B, T], metrics).

  `token_weights` multiply the clipped policy term (TRL's importance
  sampling correction: `per_token_loss * importance_sampling_ratio` before
  the KL term is added).
  """
  logps, old_logps, mask = (np.asarray(a, np.float64)
                            for a in (logps, old_logps, mask))
  a = np.asarray(advantages, np.float64)[:, None]
  coef_1 = np.exp(logps - old_logps)
  coef_2 = np.clip(coef_1, 1 - EPSILON, 1 + EPSILON_HIGH)
  per_token_loss = -np.minimum(coef_1 * a, coef_2 * a)
  is_low = (coef_1 < 1 - EPSILON) & (a < 0)
  is_high = (coef_1 > 1 + EPSILON_HIGH) & (a > 0)
  # d(-min(r A, clip(r) A)) / d logp: the clipped term is the smaller one
  # exactly on the low/high clipped tokens, and it is flat there; elsewhere
  # both terms equal r A with derivative r A (dr / dlogp = r).
  d_per_token = np.where(is_low | is_high, 0.0, -a * coef_1)
  if token_weights is not None:
    w = np.asarray(token_weights, np.float64)
    per_token_loss, d_per_token = per_token_loss * w, d_per_token * w
  metrics = {}
  if beta != 0.0:
    ref_logps = np.asarray(ref_logps, np.float64)
    per_token_kl = (np.exp(ref_logps - logps) - (ref_logps - logps) - 1)
    per_token_loss = per_token_loss + beta * per_token_kl
    d_per_token = d_per_token + beta * (1.0 - np.exp(ref_logps - logps))
    metrics["kl"] = (per_token_kl * mask).sum() / max(mask.sum(), 1.0)

  batch, length = mask.shape
  if loss_type == "grpo":
    weight = mask / np.maximum(mask.sum(-1, keepdims=True), 1.0) / batch
  elif loss_type == "bnpo":
    weight = mask / max(mask.sum(), 1.0)
  elif loss_type == "dr_grpo":
    weight = mask / (batch * (max_completion_length or length))
  elif loss_type == "dapo":
    n = mask.sum() if num_items_in_batch is None else num_items_in_batch
    weight = mask / max(n, 1.0)
  loss = (per_token_loss * weight).sum()
  grad = d_per_token * weight

  def masked_mean(x):
    return (x * mask).sum() / max(mask.sum(), 1.0)

  def seq_means(x):
    with np.errstate(invalid="ignore"):
      return (x * mask).sum(-1) / mask.sum(-1)  # nan for empty rows.

  metrics["clip_ratio/low_mean"] = masked_mean(is_low)
  metrics["clip_ratio/high_mean"] = masked_mean(is_high)
  metrics["clip_ratio/region_mean"] = masked_mean(is_low | is_high)
  metrics["clip_ratio/low_min"] = np.nanmin(seq_means(is_low))
  metrics["clip_ratio/high_max"] = np.nanmax(seq_means(is_high))
  metrics["ratio/deviation/max"] = np.max(np.abs(coef_1 - 1)[mask > 0])
  return loss, grad, metrics


# ---------------------------------------------------------------------------
# Inputs.


def make_rewards(seed):
  """Rubric-like scores in quarters: exact in float32, so group means are too.

  The first group is constant (no signal), the rest are mixed.
  """
  rng = np.random.default_rng(seed)
  rewards = rng.integers(0, 5, (NUM_PROMPTS, NUM_GENERATIONS)) / 4.0
  rewards[0] = 0.75
  for g in range(1, NUM_PROMPTS):
    rewards[g, 0], rewards[g, 1] = 0.0, 1.0
  return rewards.reshape(-1).astype(np.float32)


def make_policy_inputs(seed):
  """Ragged right-padded completions, one of them empty; ratios ~ e^N(0, .3)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, LENGTH + 1, BATCH)
  lengths[3] = 0
  lengths[5] = LENGTH
  mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.float32)
  old_logps = rng.uniform(-4.0, -0.05, (BATCH, LENGTH))
  logps = old_logps + rng.normal(0.0, 0.3, (BATCH, LENGTH))
  ref_logps = old_logps + rng.normal(0.0, 0.3, (BATCH, LENGTH))
  logps, old_logps, ref_logps = (x.astype(np.float32)
                                 for x in (logps, old_logps, ref_logps))
  # Keep ratios away from the clip edges, where float32 vs float64 could
  # disagree on which side a token falls.
  ratio = np.exp(logps.astype(np.float64) - old_logps)
  edges = np.minimum(np.abs(ratio - (1 - EPSILON)),
                     np.abs(ratio - (1 + EPSILON_HIGH)))
  assert edges.min() > 1e-5
  return logps, old_logps, ref_logps, mask


@functools.partial(jax.jit, static_argnames=("loss_type", "beta",
                                             "max_completion_length"))
def jax_loss_and_grad(logps, old_logps, ref_logps, advantages, mask, *,
                      loss_type, beta, max_completion_length=None,
                      num_items_in_batch=None, token_weights=None):
  def loss_fn(lp):
    return grpo.policy_loss(
        lp, old_logps, ref_logps, advantages, mask, epsilon=EPSILON,
        epsilon_high=EPSILON_HIGH, beta=beta, loss_type=loss_type,
        max_completion_length=max_completion_length,
        num_items_in_batch=num_items_in_batch, token_weights=token_weights)
  (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(logps)
  return loss, grad, metrics


# ---------------------------------------------------------------------------
# Advantages.


@pytest.mark.parametrize("scale_rewards", SCALES)
def test_advantages_match_numpy(scale_rewards):
  rewards = make_rewards(0)
  got = grpo.group_advantages(rewards, NUM_GENERATIONS, scale_rewards)
  want = np_advantages(rewards, NUM_GENERATIONS, scale_rewards)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale_rewards", SCALES)
def test_constant_group_has_exactly_zero_advantage(scale_rewards):
  # 0.1 is inexact in binary: a float mean of [0.1] * 3 need not be 0.1.
  rewards = np.array([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.2, 0.9, 0.4],
                     np.float32)
  advantages = grpo.group_advantages(rewards, 3, scale_rewards)
  assert np.all(np.asarray(advantages[:6]) == 0.0)
  assert np.all(np.asarray(advantages[6:]) != 0.0)

  logps, old_logps, ref_logps, _ = make_policy_inputs(1)
  mask = np.ones((9, LENGTH), np.float32)
  loss, grad, metrics = jax_loss_and_grad(
      logps[:9], old_logps[:9], ref_logps[:9], advantages, mask,
      loss_type="grpo", beta=0.04)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  assert all(np.isfinite(v) for v in metrics.values())
  # Only the KL term moves constant-group completions.
  _, grad_no_kl, _ = jax_loss_and_grad(
      logps[:9], old_logps[:9], ref_logps[:9], advantages, mask,
      loss_type="grpo", beta=0.0)
  assert np.all(np.asarray(grad_no_kl[:6]) == 0.0)


def test_group_reward_stats_match_numpy():
  rewards = make_rewards(2)
  stats = grpo.group_reward_stats(rewards, NUM_GENERATIONS)
  grouped = rewards.astype(np.float64).reshape(-1, NUM_GENERATIONS)
  group_std = np_std(grouped, axis=1)
  np.testing.assert_allclose(stats["reward"], rewards.mean(), atol=1e-7)
  np.testing.assert_allclose(stats["reward_std"], np_std(rewards), atol=1e-6)
  np.testing.assert_allclose(stats["reward_std/group_mean"], group_std.mean(),
                             atol=1e-6)
  np.testing.assert_allclose(stats["frac_reward_zero_std"],
                             np.mean(np.isclose(group_std, 0.0)))
  assert float(stats["frac_reward_zero_std"]) == 1 / NUM_PROMPTS


def test_single_generation_gives_zero_advantage():
  rewards = np.array([0.3, 0.9], np.float32)
  for scale_rewards in SCALES:
    advantages = grpo.group_advantages(rewards, 1, scale_rewards)
    assert np.all(np.asarray(advantages) == 0.0)
  stats = grpo.group_reward_stats(rewards, 1)
  assert float(stats["frac_reward_zero_std"]) == 1.0


# ---------------------------------------------------------------------------
# Policy loss.


@pytest.mark.parametrize("beta", (0.0, 0.04))
@pytest.mark.parametrize("scale_rewards", SCALES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_and_grad_match_numpy(loss_type, scale_rewards, beta):
  rewards = make_rewards(3)
  logps, old_logps, ref_logps, mask = make_policy_inputs(4)
  advantages = grpo.group_advantages(rewards, NUM_GENERATIONS, scale_rewards)
  loss, grad, metrics = jax_loss_and_grad(
      logps, old_logps, ref_logps if beta else None, advantages, mask,
      loss_type=loss_type, beta=beta)

  np_adv = np_advantages(rewards, NUM_GENERATIONS, scale_rewards)
  want_loss, want_grad, want_metrics = np_loss_and_grad(
      logps, old_logps, ref_logps, np_adv, mask, beta=beta,
      loss_type=loss_type)
  np.testing.assert_allclose(loss, want_loss, rtol=0, atol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-5)
  assert set(metrics) == set(want_metrics)
  for key, want in want_metrics.items():
    np.testing.assert_allclose(metrics[key], want, rtol=0, atol=1e-6,
                               err_msg=key)
  # The inputs are meant to exercise both clip sides.
  assert want_metrics["clip_ratio/low_mean"] > 0
  assert want_metrics["clip_ratio/high_mean"] > 0
  assert np.all(np.asarray(grad)[mask == 0] == 0.0)


@pytest.mark.parametrize("beta", (0.0, 0.04))
def test_token_weights_scale_the_policy_term(beta):
  rewards = make_rewards(4)
  logps, old_logps, ref_logps, mask = make_policy_inputs(6)
  weights = np.random.default_rng(7).uniform(0.5, 2.0, logps.shape)
  weights = weights.astype(np.float32)
  advantages = grpo.group_advantages(rewards, NUM_GENERATIONS, "group")
  loss, grad, _ = jax_loss_and_grad(
      logps, old_logps, ref_logps if beta else None, advantages, mask,
      loss_type="dapo", beta=beta, token_weights=weights)
  want_loss, want_grad, _ = np_loss_and_grad(
      logps, old_logps, ref_logps,
      np_advantages(rewards, NUM_GENERATIONS, "group"), mask, beta=beta,
      loss_type="dapo", token_weights=weights)
  np.testing.assert_allclose(loss, want_loss, rtol=0, atol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-5)


def test_sampler_mismatch_hand_computed():
  learner_logps = np.log(np.array([[0.5, 0.25, 0.1], [0.2, 0.4, 0.3]]))
  # Ratios learner / sampler: [[0.5, 4.0, pad], [2.0, 1.25, 0.8]].
  sampler_logps = np.log(np.array([[1.0, 0.0625, 0.9], [0.1, 0.32, 0.375]]))
  mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
  weights, metrics = grpo.sampler_mismatch(
      jnp.asarray(learner_logps, jnp.float32),
      jnp.asarray(sampler_logps, jnp.float32), mask, cap=3.0)
  truncated = np.array([0.5, 3.0, 2.0, 1.25, 0.8])  # 4.0 capped at 3.
  np.testing.assert_allclose(np.asarray(weights)[mask > 0], truncated,
                             rtol=1e-6)
  deltas = np.abs(np.log([0.5, 4.0, 2.0, 1.25, 0.8]))
  want = {
      "sampling/sampling_logp_difference/mean": deltas.mean(),
      "sampling/sampling_logp_difference/max": deltas.max(),
      "sampling/importance_sampling_ratio/min": 0.5,
      "sampling/importance_sampling_ratio/mean": truncated.mean(),
      "sampling/importance_sampling_ratio/max": 3.0,
  }
  assert set(metrics) == set(want)
  for key, value in want.items():
    np.testing.assert_allclose(metrics[key], value, rtol=1e-5, err_msg=key)


def test_dr_grpo_uses_max_completion_length():
  rewards = make_rewards(5)
  logps, old_logps, ref_logps, mask = make_policy_inputs(6)
  advantages = grpo.group_advantages(rewards, NUM_GENERATIONS, "none")
  loss, grad, _ = jax_loss_and_grad(logps, old_logps, ref_logps, advantages,
                                    mask, loss_type="dr_grpo", beta=0.04,
                                    max_completion_length=64)
  want_loss, want_grad, _ = np_loss_and_grad(
      logps, old_logps, ref_logps, np_advantages(rewards, 4, "none"), mask,
      beta=0.04, loss_type="dr_grpo", max_completion_length=64)
  np.testing.assert_allclose(loss, want_loss, rtol=0, atol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-5)


def test_dapo_micro_batches_sum_to_full_batch():
  rewards = make_rewards(7)
  logps, old_logps, ref_logps, mask = make_policy_inputs(8)
  advantages = grpo.group_advantages(rewards, NUM_GENERATIONS, "group")
  full_loss, full_grad, _ = jax_loss_and_grad(
      logps, old_logps, ref_logps, advantages, mask, loss_type="dapo",
      beta=0.04)
  num_items = jnp.asarray(mask.sum())
  half = BATCH // 2
  parts = [jax_loss_and_grad(logps[s], old_logps[s], ref_logps[s],
                             advantages[s], mask[s], loss_type="dapo",
                             beta=0.04, num_items_in_batch=num_items)
           for s in (slice(0, half), slice(half, BATCH))]
  np.testing.assert_allclose(parts[0][0] + parts[1][0], full_loss, atol=1e-6)
  np.testing.assert_allclose(np.concatenate([parts[0][1], parts[1][1]]),
                             full_grad, atol=1e-7)


def test_padding_values_never_reach_loss_or_grad():
  rewards = make_rewards(9)
  logps, old_logps, ref_logps, mask = make_policy_inputs(10)
  advantages = grpo.group_advantages(rewards, NUM_GENERATIONS, "group")
  clean = jax_loss_and_grad(logps, old_logps, ref_logps, advantages, mask,
                            loss_type="grpo", beta=0.04)
  pad = mask == 0
  dirty = [x.copy() for x in (logps, old_logps, ref_logps)]
  dirty[0][pad], dirty[1][pad], dirty[2][pad] = -np.inf, 0.0, np.inf
  got = jax_loss_and_grad(*dirty, advantages, mask, loss_type="grpo",
                          beta=0.04)
  np.testing.assert_array_equal(got[0], clean[0])
  np.testing.assert_array_equal(got[1], clean[1])
  for key in clean[2]:
    np.testing.assert_array_equal(got[2][key], clean[2][key], err_msg=key)


def test_on_policy_old_logps_none():
  rewards = make_rewards(11)
  logps, _, ref_logps, mask = make_policy_inputs(12)
  advantages = grpo.group_advantages(rewards, NUM_GENERATIONS, "group")
  loss, grad, metrics = jax_loss_and_grad(logps, None, ref_logps, advantages,
                                          mask, loss_type="bnpo", beta=0.04)
  want_loss, want_grad, _ = np_loss_and_grad(
      logps, logps, ref_logps, np_advantages(rewards, 4, "group"), mask,
      beta=0.04, loss_type="bnpo")
  np.testing.assert_allclose(loss, want_loss, rtol=0, atol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-5)
  assert float(metrics["clip_ratio/region_mean"]) == 0.0


def test_empty_batch_is_finite():
  logps, old_logps, ref_logps, mask = make_policy_inputs(13)
  advantages = np.linspace(-1, 1, BATCH).astype(np.float32)
  for loss_type in LOSS_TYPES:
    loss, grad, metrics = jax_loss_and_grad(
        logps, old_logps, ref_logps, advantages, np.zeros_like(mask),
        loss_type=loss_type, beta=0.04)
    assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0.0)
    assert all(float(v) == 0.0 for v in metrics.values())


def test_epsilon_high_defaults_to_epsilon():
  logps, old_logps, _, mask = make_policy_inputs(14)
  advantages = np.linspace(-1, 1, BATCH).astype(np.float32)
  kwargs = dict(beta=0.0, loss_type="bnpo")
  symmetric = grpo.policy_loss(logps, old_logps, None, advantages, mask,
                               epsilon=EPSILON, **kwargs)
  explicit = grpo.policy_loss(logps, old_logps, None, advantages, mask,
                              epsilon=EPSILON, epsilon_high=EPSILON, **kwargs)
  np.testing.assert_array_equal(symmetric[0], explicit[0])


# ---------------------------------------------------------------------------
# Errors.


def test_unknown_loss_type_names_key_and_choices():
  logps, old_logps, _, mask = make_policy_inputs(15)
  with pytest.raises(UserError, match=r"loss_type='cispo'.*'grpo'.*'dapo'"):
    grpo.policy_loss(logps, old_logps, None, np.zeros(BATCH), mask,
                     epsilon=EPSILON, epsilon_high=EPSILON_HIGH, beta=0.0,
                     loss_type="cispo")


def test_unknown_scale_rewards_names_key_and_choices():
  with pytest.raises(UserError, match=r"scale_rewards='std'.*'group'.*'none'"):
    grpo.group_advantages(make_rewards(0), NUM_GENERATIONS, "std")


def test_scale_rewards_accepts_trl_booleans():
  rewards = make_rewards(0)
  np.testing.assert_array_equal(
      grpo.group_advantages(rewards, NUM_GENERATIONS, True),
      grpo.group_advantages(rewards, NUM_GENERATIONS, "group"))
  np.testing.assert_array_equal(
      grpo.group_advantages(rewards, NUM_GENERATIONS, False),
      grpo.group_advantages(rewards, NUM_GENERATIONS, "none"))


def test_num_generations_must_divide_batch():
  with pytest.raises(UserError, match="num_generations=3"):
    grpo.group_advantages(make_rewards(0), 3, "group")
