"""Continuation log-likelihoods with shared-context KV reuse."""

import numpy as np
import pytest

from hmx_jax import scoring
from hmx_jax.errors import UserError
from hmx_jax.models import decoder

from helpers import FAMILIES, tiny_config, tiny_params


def reference_logliks(config, params, contexts, options):
  """Each context + option alone, summed in float64.

  Sequences are right-padded to one length: causal attention never lets a
  token see the padding after it, so no mask is needed.
  """
  out = []
  for ctx, opts in zip(contexts, options):
    row = []
    for opt in opts:
      seq = list(ctx) + list(opt)
      seq = np.asarray([seq + [0] * (32 - len(seq))])
      logits = np.asarray(decoder.forward(config, params, seq,
                                          np.ones_like(seq)), np.float64)[0]
      logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True))
                             .sum(-1, keepdims=True)) - logits.max(
                                 -1, keepdims=True)
      start = len(ctx)
      row.append(sum(logp[start - 1 + i, t] for i, t in enumerate(opt)))
    out.append(np.asarray(row))
  return out


def random_items(vocab, n_items=5, seed=0, prefix_len=7):
  """Contexts sharing a prefix, then 1-9 own tokens; 1-5 options of 1-6."""
  rng = np.random.default_rng(seed)
  prefix = rng.integers(3, vocab, prefix_len).tolist()
  contexts, options = [], []
  for i in range(n_items):
    contexts.append(prefix + rng.integers(3, vocab, 1 + (4 * i) % 9).tolist())
    options.append([rng.integers(3, vocab, 1 + (i + j) % 6).tolist()
                    for j in range(1 + (2 * i) % 5)])
  return contexts, options


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_scoring_equals_separate_sequences(family):
  config = tiny_config(family)
  params = tiny_params(config)
  contexts, options = random_items(config.vocab_size)
  expected = reference_logliks(config, params, contexts, options)
  for got in (
      scoring.option_logliks(config, params, contexts, options, batch_size=2),
      scoring.option_logliks(config, params, contexts, options, batch_size=4,
                             share_prefix=False),
      scoring.option_logliks_full(config, params, contexts, options,
                                  batch_size=3)):
    assert [len(g) for g in got] == [len(e) for e in expected]
    for g, e in zip(got, expected):
      np.testing.assert_allclose(g, e, atol=1e-4, rtol=0)


def test_single_token_options_and_whole_shared_contexts():
  config = tiny_config("qwen3")
  params = tiny_params(config)
  # Identical contexts: the prefix stops one token short of each context.
  contexts = [[5, 6, 7, 8]] * 3
  options = [[[9]], [[10], [11]], [[12], [13], [14]]]
  got = scoring.option_logliks(config, params, contexts, options)
  expected = reference_logliks(config, params, contexts, options)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_suffix_reads_equal_separate_sequences(family):
  # Each context + suffix alone: the candidates' log-probs at its last
  # position (the reference's log-likelihood of a one-token option).
  config = tiny_config(family)
  params = tiny_params(config)
  contexts, suffixes = random_items(config.vocab_size, seed=1)
  candidates = [3, 17, 40]
  expected = [np.asarray([reference_logliks(config, params,
                                            [list(ctx) + list(suffix)],
                                            [[[t] for t in candidates]])[0]
                          for suffix in item])
              for ctx, item in zip(contexts, suffixes)]
  got = scoring.suffix_logprobs(config, params, contexts, suffixes,
                                candidates, batch_size=2)
  for g, e in zip(got, expected):
    assert g.shape == (len(e), len(candidates))
    np.testing.assert_allclose(g, e, atol=1e-4, rtol=0)


def test_common_prefix_length():
  assert scoring.common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
  assert scoring.common_prefix_length([[1], [2]]) == 0
  assert scoring.common_prefix_length([]) == 0


def test_batches_of_one_bucket_compile_once():
  config = tiny_config("llama")
  params = tiny_params(config)
  contexts, options = random_items(config.vocab_size, n_items=6, seed=1)
  scoring.option_logliks(config, params, contexts, options, batch_size=2)
  before = scoring._score_batch._cache_size()
  contexts2, options2 = random_items(config.vocab_size, n_items=6, seed=2)
  scoring.option_logliks(config, params, contexts2, options2, batch_size=2)
  assert scoring._score_batch._cache_size() == before


def test_bad_items_are_named():
  config = tiny_config("llama")
  params = tiny_params(config)
  with pytest.raises(UserError, match="item 1: empty context"):
    scoring.option_logliks(config, params, [[1], []], [[[2]], [[3]]])
  with pytest.raises(UserError, match="item 0, option 1"):
    scoring.option_logliks(config, params, [[1]], [[[2], []]])
