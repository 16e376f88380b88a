"""Contrastive objective and pairs against hand-written references.

The loss reference below shares no code with
`hmx_jax.objectives.contrastive`. It transcribes TRL v1.9.0
`DPOTrainer._compute_loss` (sigmoid, hinge, ipo; the rewards/* metrics) and,
for label smoothing, TRL 0.28 `DPOTrainer.dpo_loss` (cDPO) in float64; its
gradients w.r.t. the four log-prob inputs are derived by hand, so the JAX
gradients are checked exactly rather than against finite differences.
"""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmx_jax.data import PreferencePair, load_pairs
from hmx_jax.errors import UserError
from hmx_jax.objectives import contrastive

NUM_PAIRS = 12
BETA = 0.1
# (loss_type, label_smoothing): TRL applies label smoothing to sigmoid only.
CASES = (("sigmoid", 0.0), ("sigmoid", 0.1), ("sigmoid", 0.4), ("ipo", 0.0),
         ("hinge", 0.0))
WEIGHTINGS = ("none", "binary", "fractional")

# ---------------------------------------------------------------------------
# NumPy reference (float64).


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, *, beta,
                loss_type, label_smoothing, weights):
  """Returns (loss, (d/d chosen, d/d rejected, d/d ref_chosen,
  d/d ref_rejected), metrics); `weights` None means all ones."""
  chosen, rejected, ref_chosen, ref_rejected = (
      np.asarray(a, np.float64)
      for a in (chosen, rejected, ref_chosen, ref_rejected))
  chosen_logratios = chosen - ref_chosen
  rejected_logratios = rejected - ref_rejected
  delta_score = chosen_logratios - rejected_logratios
  z = beta * delta_score
  ls = label_smoothing
  if loss_type == "sigmoid":
    losses = (-np_log_sigmoid(z) * (1 - ls) - np_log_sigmoid(-z) * ls)
    # d/dz [-log s(z)] = s(z) - 1 and d/dz [-log s(-z)] = s(z).
    d_delta = beta * ((np_sigmoid(z) - 1) * (1 - ls) + np_sigmoid(z) * ls)
  elif loss_type == "hinge":
    losses = np.maximum(0.0, 1 - z)
    d_delta = np.where(1 - z > 0, -beta, 0.0)
  elif loss_type == "ipo":
    losses = (delta_score - 1 / (2 * beta)) ** 2
    d_delta = 2 * (delta_score - 1 / (2 * beta))
  if weights is None:
    weights = np.ones_like(chosen)
  w = np.asarray(weights, np.float64) / np.sum(weights)
  loss = np.sum(w * losses)
  # delta = (chosen - ref_chosen) - (rejected - ref_rejected).
  g = w * d_delta
  grads = (g, -g, -g, g)
  chosen_rewards = beta * chosen_logratios
  rejected_rewards = beta * rejected_logratios
  metrics = {
      "rewards/chosen": np.sum(w * chosen_rewards),
      "rewards/rejected": np.sum(w * rejected_rewards),
      "rewards/margins": np.sum(w * (chosen_rewards - rejected_rewards)),
      "rewards/accuracies": np.sum(w * (chosen_rewards > rejected_rewards)),
  }
  return loss, grads, metrics, z


# ---------------------------------------------------------------------------
# Inputs.


def make_logps(seed, loss_type):
  """[P] policy and reference log-probs: summed over ~10-60 tokens, or
  per-token means for ipo; beta * logits spans about -2..2."""
  rng = np.random.default_rng(seed)
  if loss_type == "ipo":
    chosen, rejected = rng.uniform(-3.0, -0.2, (2, NUM_PAIRS))
    noise = 1.0
  else:
    chosen, rejected = rng.uniform(-80.0, -5.0, (2, NUM_PAIRS))
    noise = 8.0
  ref_chosen = chosen + rng.normal(0.0, noise, NUM_PAIRS)
  ref_rejected = rejected + rng.normal(0.0, noise, NUM_PAIRS)
  return tuple(x.astype(np.float32)
               for x in (chosen, rejected, ref_chosen, ref_rejected))


def make_weights(weighting):
  if weighting == "none":
    return None
  weights = np.ones(NUM_PAIRS, np.float32)
  weights[[2, 5, 9]] = 0.0
  if weighting == "fractional":
    weights *= np.random.default_rng(3).uniform(0.5, 2.0, NUM_PAIRS)
  return weights.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("loss_type", "beta",
                                             "label_smoothing"))
def jax_loss_and_grads(chosen, rejected, ref_chosen, ref_rejected, weights,
                       *, loss_type, beta, label_smoothing):
  def loss_fn(*logps):
    return contrastive.preference_loss(
        *logps, beta=beta, loss_type=loss_type,
        label_smoothing=label_smoothing, weights=weights)
  (loss, metrics), grads = jax.value_and_grad(
      loss_fn, argnums=(0, 1, 2, 3), has_aux=True)(
          chosen, rejected, ref_chosen, ref_rejected)
  return loss, grads, metrics


# ---------------------------------------------------------------------------
# Loss, gradients and metrics.


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("loss_type,label_smoothing", CASES)
def test_loss_and_grads_match_numpy(loss_type, label_smoothing, weighting):
  logps = make_logps(0, loss_type)
  weights = make_weights(weighting)
  loss, grads, metrics = jax_loss_and_grads(
      *logps, weights, loss_type=loss_type, beta=BETA,
      label_smoothing=label_smoothing)
  want_loss, want_grads, want_metrics, z = np_dpo_loss(
      *logps, beta=BETA, loss_type=loss_type,
      label_smoothing=label_smoothing, weights=weights)

  np.testing.assert_allclose(loss, want_loss, rtol=0, atol=1e-5)
  for name, got, want in zip(("chosen", "rejected", "ref_chosen",
                              "ref_rejected"), grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)
  assert set(metrics) == set(want_metrics)
  for key, want in want_metrics.items():
    np.testing.assert_allclose(metrics[key], want, rtol=0, atol=1e-5,
                               err_msg=key)
  if weights is not None:
    for got in grads:
      assert np.all(np.asarray(got)[weights == 0] == 0.0)
  if loss_type != "ipo":
    # The inputs are meant to exercise both sides of the hinge and of zero.
    assert np.any(z > 1) and np.any(z < 1) and np.any(z < 0)
    assert np.min(np.abs(1 - z)) > 1e-3


def test_hand_computed_example():
  # chosen log-ratios [1, -1, 0], rejected [-1, 1, -1]; logits [2, -2, 1].
  chosen = np.array([-1.0, -4.0, -2.0], np.float32)
  ref_chosen = np.array([-2.0, -3.0, -2.0], np.float32)
  rejected = np.array([-3.0, -1.0, -5.0], np.float32)
  ref_rejected = np.array([-2.0, -2.0, -4.0], np.float32)
  logps = (chosen, rejected, ref_chosen, ref_rejected)
  beta = 0.5  # beta * logits = [1, -1, 0.5]; ipo's target logits are 1.

  loss, metrics = contrastive.preference_loss(*logps, beta=beta)
  want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))
          + math.log1p(math.exp(-0.5))) / 3
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  # Rewards: chosen [0.5, -0.5, 0], rejected [-0.5, 0.5, -0.5].
  np.testing.assert_allclose(metrics["rewards/chosen"], 0.0, atol=1e-7)
  np.testing.assert_allclose(metrics["rewards/rejected"], -0.5 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/margins"], 0.5 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/accuracies"], 2 / 3, rtol=1e-6)

  # Label smoothing 0.25: 0.75 * -log s(z) + 0.25 * -log s(-z).
  loss, _ = contrastive.preference_loss(*logps, beta=beta,
                                        label_smoothing=0.25)
  want = sum(0.75 * math.log1p(math.exp(-z)) + 0.25 * math.log1p(math.exp(z))
             for z in (1.0, -1.0, 0.5)) / 3
  np.testing.assert_allclose(loss, want, rtol=1e-6)

  loss, _ = contrastive.preference_loss(*logps, beta=beta, loss_type="hinge")
  np.testing.assert_allclose(loss, (0 + 2 + 0.5) / 3, rtol=1e-6)
  loss, _ = contrastive.preference_loss(*logps, beta=beta, loss_type="ipo")
  np.testing.assert_allclose(loss, (1 + 9 + 0) / 3, rtol=1e-6)

  # Without the second pair.
  weights = np.array([1.0, 0.0, 1.0], np.float32)
  loss, metrics = contrastive.preference_loss(*logps, beta=beta,
                                              loss_type="hinge",
                                              weights=weights)
  np.testing.assert_allclose(loss, 0.25, rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/chosen"], 0.25, rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/rejected"], -0.5, rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/margins"], 0.75, rtol=1e-6)
  assert float(metrics["rewards/accuracies"]) == 1.0


def test_equal_policy_and_reference_ratios():
  # logits 0: sigmoid log 2, hinge 1, ipo 1 / (4 beta^2); a zero margin is
  # not an accurate pair.
  logps = [np.full(4, v, np.float32) for v in (-3.0, -5.0, -2.0, -4.0)]
  beta = 0.25
  want = {"sigmoid": math.log(2.0), "hinge": 1.0, "ipo": 4.0}
  for loss_type, value in want.items():
    loss, metrics = contrastive.preference_loss(*logps, beta=beta,
                                                loss_type=loss_type)
    np.testing.assert_allclose(loss, value, rtol=1e-6, err_msg=loss_type)
    assert float(metrics["rewards/margins"]) == 0.0
    assert float(metrics["rewards/accuracies"]) == 0.0


@pytest.mark.parametrize("loss_type", contrastive.LOSS_TYPES)
def test_no_pairs_give_zero_loss_and_grads(loss_type):
  empty = [np.zeros(0, np.float32)] * 4
  loss, grads, metrics = jax_loss_and_grads(
      *empty, None, loss_type=loss_type, beta=BETA, label_smoothing=0.0)
  assert float(loss) == 0.0 and all(g.shape == (0,) for g in grads)
  assert all(float(v) == 0.0 for v in metrics.values())

  logps = make_logps(1, loss_type)
  loss, grads, metrics = jax_loss_and_grads(
      *logps, np.zeros(NUM_PAIRS, np.float32), loss_type=loss_type,
      beta=BETA, label_smoothing=0.0)
  assert float(loss) == 0.0
  assert all(np.all(np.asarray(g) == 0.0) for g in grads)
  assert all(float(v) == 0.0 for v in metrics.values())


@pytest.mark.parametrize("loss_type,label_smoothing", CASES)
def test_padding_values_never_reach_loss_metrics_or_grads(loss_type,
                                                          label_smoothing):
  logps = make_logps(2, loss_type)
  weights = make_weights("binary")
  kwargs = dict(loss_type=loss_type, beta=BETA,
                label_smoothing=label_smoothing)
  clean = jax_loss_and_grads(*logps, weights, **kwargs)
  dirty = [x.copy() for x in logps]
  pad = weights == 0
  for x, value in zip(dirty, (-np.inf, np.inf, np.nan, -np.inf)):
    x[pad] = value
  got = jax_loss_and_grads(*dirty, weights, **kwargs)
  np.testing.assert_array_equal(got[0], clean[0])
  for g, c in zip(got[1], clean[1]):
    np.testing.assert_array_equal(g, c)
  for key in clean[2]:
    np.testing.assert_array_equal(got[2][key], clean[2][key], err_msg=key)


@pytest.mark.parametrize("loss_type", contrastive.LOSS_TYPES)
def test_jit_with_static_loss_type_and_traced_beta(loss_type):
  logps = [jnp.asarray(x) for x in make_logps(4, loss_type)]
  weights = jnp.asarray(make_weights("binary"))
  eager = contrastive.preference_loss(*logps, beta=BETA, loss_type=loss_type,
                                      weights=weights)

  @functools.partial(jax.jit, static_argnames=("loss_type",))
  def traced_beta(beta, *logps, loss_type):
    return contrastive.preference_loss(*logps, beta=beta, loss_type=loss_type,
                                       weights=weights)

  for got in (jax.jit(functools.partial(
      contrastive.preference_loss, beta=BETA, loss_type=loss_type))(
          *logps, weights=weights),
              traced_beta(jnp.float32(BETA), *logps, loss_type=loss_type)):
    np.testing.assert_allclose(got[0], eager[0], rtol=1e-6)
    for key in eager[1]:
      np.testing.assert_allclose(got[1][key], eager[1][key], rtol=1e-6,
                                 atol=1e-7, err_msg=key)


# ---------------------------------------------------------------------------
# Settings errors.


def _loss_with(**kwargs):
  logps = make_logps(5, "sigmoid")
  return contrastive.preference_loss(*logps, **{"beta": BETA, **kwargs})


def test_unknown_loss_type_names_key_and_choices():
  with pytest.raises(UserError, match=r"contrastive\.loss_type='robust'.*"
                     r"'sigmoid', 'ipo', 'hinge'"):
    _loss_with(loss_type="robust")
  assert contrastive.LOSS_TYPES == ("sigmoid", "ipo", "hinge")


@pytest.mark.parametrize("beta", (0.0, -0.1, float("nan")))
def test_beta_must_be_positive(beta):
  with pytest.raises(UserError, match=r"contrastive\.beta=.*must be > 0"):
    _loss_with(beta=beta)


@pytest.mark.parametrize("label_smoothing", (-0.01, 0.5, 0.7))
def test_label_smoothing_range(label_smoothing):
  with pytest.raises(UserError,
                     match=r"contrastive\.label_smoothing=.*\[0, 0\.5\)"):
    _loss_with(label_smoothing=label_smoothing)


@pytest.mark.parametrize("loss_type", ("ipo", "hinge"))
def test_label_smoothing_only_for_sigmoid(loss_type):
  with pytest.raises(UserError, match=r"contrastive\.label_smoothing=0\.1 "
                     r"applies only to contrastive\.loss_type='sigmoid'"):
    _loss_with(loss_type=loss_type, label_smoothing=0.1)


def test_mismatched_shapes_are_rejected():
  logps = list(make_logps(6, "sigmoid"))
  logps[2] = logps[2][:-1]
  with pytest.raises(ValueError, match="share one shape"):
    contrastive.preference_loss(*logps, beta=BETA)


# ---------------------------------------------------------------------------
# Online pairs.

# Four groups of four: clear winner with a tied maximum; constant; ties at
# both ends (gap 0.5); gap 0.25. Quarters are exact in binary.
GROUP_REWARDS = np.array([0.25, 1.0, 0.0, 1.0,
                          0.5, 0.5, 0.5, 0.5,
                          0.75, 0.25, 0.75, 0.25,
                          0.5, 0.25, 0.5, 0.5], np.float32)


@pytest.mark.parametrize("min_gap,chosen,rejected,skipped", [
    (0.0, [1, 8, 12], [2, 9, 13], 0.25),  # A constant group is never kept.
    (0.25, [1, 8, 12], [2, 9, 13], 0.25),  # gap == min_gap is kept.
    (0.2500001, [1, 8], [2, 9], 0.5),
    (0.5, [1, 8], [2, 9], 0.5),
    (0.75, [1], [2], 0.75),
    (1.0, [1], [2], 0.75),
    (1.5, [], [], 1.0),
])
def test_select_pairs_hand_written_groups(min_gap, chosen, rejected, skipped):
  got_chosen, got_rejected, got_skipped = contrastive.select_pairs(
      GROUP_REWARDS, 4, min_gap)
  assert got_chosen.dtype == np.int64 and got_rejected.dtype == np.int64
  assert got_chosen.tolist() == chosen
  assert got_rejected.tolist() == rejected
  assert got_skipped == skipped and isinstance(got_skipped, float)


def test_select_pairs_other_group_sizes_and_edge_cases():
  # Pairs of two; the reversed direction swaps chosen and rejected.
  rewards = np.array([0.2, 0.9, 0.6, 0.1, 0.3, 0.3])
  assert [x.tolist() for x in contrastive.select_pairs(rewards, 2, 0.0)[:2]
          ] == [[1, 2], [0, 3]]
  assert [x.tolist() for x in contrastive.select_pairs(-rewards, 2, 0.0)[:2]
          ] == [[0, 3], [1, 2]]
  assert contrastive.select_pairs(rewards, 2, 0.0)[2] == 1 / 3
  # One generation per prompt: no pairs at all.
  chosen, rejected, skipped = contrastive.select_pairs(rewards, 1, 0.0)
  assert chosen.size == 0 and rejected.size == 0 and skipped == 1.0
  # No completions.
  chosen, rejected, skipped = contrastive.select_pairs(np.zeros(0), 4, 0.1)
  assert chosen.size == 0 and rejected.size == 0 and skipped == 0.0
  # A group with a non-finite reward is skipped.
  rewards = np.array([0.0, 1.0, np.nan, 0.5, np.inf, 0.0, 0.25, 0.75])
  chosen, rejected, skipped = contrastive.select_pairs(rewards, 2, 0.0)
  assert chosen.tolist() == [1, 7] and rejected.tolist() == [0, 6]
  assert skipped == 0.5


def test_select_pairs_errors():
  with pytest.raises(UserError, match="num_generations=3"):
    contrastive.select_pairs(GROUP_REWARDS, 3, 0.0)
  with pytest.raises(UserError, match=r"contrastive\.min_gap=-0\.1"):
    contrastive.select_pairs(GROUP_REWARDS, 4, -0.1)


# ---------------------------------------------------------------------------
# Offline pairs file.


def _pair(**overrides):
  pair = {"id": "p1", "messages": [{"role": "user", "content": "How are you?"}],
          "chosen": "I feel curious today.", "rejected": "I have no feelings."}
  pair.update(overrides)
  return pair


_GOOD = json.dumps(_pair())


def test_load_pairs_good_file(tmp_path):
  path = tmp_path / "pairs.jsonl"
  second = _pair(id="p2", messages=[
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"},
      {"role": "user", "content": "Do you get bored?"}],
      chosen="  Sometimes, a little.\n", rejected="No.")
  path.write_text(_GOOD + "\n\n" + json.dumps(second) + "\n")
  want = [
      PreferencePair("p1", [{"role": "user", "content": "How are you?"}],
                     "I feel curious today.", "I have no feelings."),
      PreferencePair("p2", second["messages"], "  Sometimes, a little.\n",
                     "No."),
  ]
  assert load_pairs(path) == want
  assert load_pairs(str(path)) == want


_MESSAGES = lambda *turns: [{"role": r, "content": c} for r, c in turns]


@pytest.mark.parametrize("bad_line,message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("\"text\"", "expected a JSON object, got str"),
    (json.dumps({k: v for k, v in _pair(id="b").items() if k != "chosen"}),
     "missing key(s) chosen"),
    (json.dumps({"id": "b"}), "missing key(s) messages, chosen, rejected"),
    (json.dumps(_pair(id="b", category="x")), "unexpected key(s) category"),
    (json.dumps(_pair(id=7)), "'id' must be a non-empty string"),
    (json.dumps(_pair(id=" ")), "'id' must be a non-empty string"),
    (json.dumps(_pair(id="b", chosen="")),
     "'chosen' must be a non-empty string"),
    (json.dumps(_pair(id="b", rejected=None)),
     "'rejected' must be a non-empty string"),
    (json.dumps(_pair(id="b", rejected=["No."])),
     "'rejected' must be a non-empty string"),
    (json.dumps(_pair(id="b", messages="hello")),
     "'messages' must be a non-empty list"),
    (json.dumps(_pair(id="b", messages=[])),
     "'messages' must be a non-empty list"),
    (json.dumps(_pair(id="b", messages=[{"role": "user"}])),
     "messages[0] must be an object with exactly the keys 'role' and "
     "'content'"),
    (json.dumps(_pair(id="b", messages=_MESSAGES(("bot", "Hi")))),
     "messages[0] has unknown role 'bot'"),
    (json.dumps(_pair(id="b", messages=_MESSAGES(("user", "  ")))),
     "messages[0].content must be a non-empty string"),
    (json.dumps(_pair(id="b", messages=_MESSAGES(("user", "Hi"),
                                                 ("assistant", "Hello")))),
     "the last message must be a user turn, got 'assistant'"),
    (json.dumps(_pair()), "duplicate id 'p1' (first at line 1)"),
    (json.dumps(_pair(id="b", chosen="Same answer.",
                      rejected="  Same answer.\n")),
     "'chosen' and 'rejected' are the same text"),
])
def test_malformed_pairs_name_file_and_line(tmp_path, bad_line, message):
  path = tmp_path / "bad.jsonl"
  # The blank line counts: the bad row is line 3.
  path.write_text(_GOOD + "\n\n" + bad_line + "\n")
  with pytest.raises(UserError) as e:
    load_pairs(path)
  text = str(e.value)
  assert text.startswith(f"{path}:3: "), text
  assert message in text
  assert "\n" not in text


@pytest.mark.parametrize("content", ("", "\n", "\n  \n"))
def test_empty_pairs_file(tmp_path, content):
  path = tmp_path / "empty.jsonl"
  path.write_text(content)
  with pytest.raises(UserError) as e:
    load_pairs(path)
  assert str(e.value) == f"{path}: pairs file holds no pairs"


def test_missing_and_unreadable_pairs_files(tmp_path):
  missing = tmp_path / "nope.jsonl"
  with pytest.raises(UserError) as e:
    load_pairs(missing)
  assert str(e.value) == f"{missing}: pairs file not found"
  binary = tmp_path / "binary.jsonl"
  binary.write_bytes(b"\xff\xfe\x00")
  with pytest.raises(UserError, match="cannot read pairs file"):
    load_pairs(binary)
  with pytest.raises(UserError, match="cannot read pairs file"):
    load_pairs(tmp_path)  # A directory.
