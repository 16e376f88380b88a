"""KV-cache sampler: parity with full forward, sampling rules, compilation."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmx_jax import sampling
from hmx_jax.errors import UserError
from hmx_jax.kernels import cpu as kernels_cpu
from hmx_jax.models import decoder

from helpers import FAMILIES, tiny_config, tiny_params

PROMPT_LENGTHS = (3, 9, 14, 1)


def mixed_prompts(vocab, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, vocab, n).tolist() for n in PROMPT_LENGTHS]


@pytest.mark.parametrize("cpu_kernels", [False, True],
                         ids=["xla", "cpu_kernels"])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_full_forward_argmax(family, cpu_kernels):
  if cpu_kernels and not kernels_cpu.available():
    pytest.skip("the CPU decode kernels could not be built here")
  config = tiny_config(family)
  params = tiny_params(config)
  prompts = mixed_prompts(config.vocab_size)
  steps = 12  # Past Gemma 2's 5-token window.
  out = sampling.generate(config, params, prompts, max_new_tokens=steps,
                          stop_ids=[], cpu_kernels=cpu_kernels)
  assert out.tokens.shape == (len(prompts), steps)
  assert out.finish_reasons == ["length"] * len(prompts)
  for i, prompt in enumerate(prompts):
    seq = np.asarray(prompt + out.tokens[i].tolist())[None]
    logits = np.asarray(decoder.forward(config, params, seq,
                                        np.ones_like(seq)))[0]
    # The prediction after each prefix is the next sampled token.
    predicted = logits[len(prompt) - 1:-1]
    np.testing.assert_array_equal(predicted.argmax(-1), out.tokens[i])
    logp = jax.nn.log_softmax(predicted, axis=-1)
    expected = np.take_along_axis(np.asarray(logp), out.tokens[i][:, None],
                                  -1)[:, 0]
    np.testing.assert_allclose(out.logprobs[i], expected, atol=1e-4, rtol=0)


def test_same_seed_same_output_and_seeds_differ():
  config = tiny_config("qwen3")
  params = tiny_params(config)
  prompts = mixed_prompts(config.vocab_size)
  kw = dict(max_new_tokens=8, temperature=1.5, stop_ids=[])
  a = sampling.generate(config, params, prompts, seed=3, **kw)
  b = sampling.generate(config, params, prompts, seed=3, **kw)
  c = sampling.generate(config, params, prompts, seed=4, **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
  assert not np.array_equal(a.tokens, c.tokens)


def test_sampled_logprobs_are_temperature_scaled_log_softmax():
  config = tiny_config("llama")
  params = tiny_params(config)
  prompt = [5, 6, 7]
  out = sampling.generate(config, params, [prompt], max_new_tokens=6,
                          temperature=0.7, seed=1, stop_ids=[])
  seq = np.asarray(prompt + out.tokens[0].tolist())[None]
  logits = np.asarray(decoder.forward(config, params, seq,
                                      np.ones_like(seq)))[0, 2:-1]
  logp = np.asarray(jax.nn.log_softmax(logits / 0.7, axis=-1))
  expected = np.take_along_axis(logp, out.tokens[0][:, None], -1)[:, 0]
  np.testing.assert_allclose(out.logprobs[0], expected, atol=1e-4, rtol=0)


# Hand-set distribution over 6 tokens: p = .4 .25 .15 .1 .06 .04
PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])


def draw(top_k, top_p, n=4000):
  logits = jnp.log(jnp.asarray(np.tile(PROBS[[3, 0, 5, 1, 4, 2]], (n, 1)),
                               jnp.float32))
  s = sampling.SamplingConfig(max_new_tokens=1, temperature=1.0, top_k=top_k,
                              top_p=top_p)
  tokens, _ = sampling.sample_token(logits, jax.random.key(0), s)
  return set(np.asarray(tokens).tolist())


def test_top_k_never_samples_outside_its_set():
  # Permuted vocabulary: token ids of the 2 / 3 most likely are {1, 3} and
  # {1, 3, 5}.
  assert draw(top_k=2, top_p=1.0) == {1, 3}
  assert draw(top_k=3, top_p=1.0) == {1, 3, 5}
  assert draw(top_k=1, top_p=1.0) == {1}


def test_top_p_never_samples_outside_its_nucleus():
  # Cumulative mass .4 .65 .8 .9: top_p=.6 needs {.4, .25}; .65 exactly
  # reaches it with the same two; .66 needs the third.
  assert draw(top_k=0, top_p=0.6) == {1, 3}
  assert draw(top_k=0, top_p=0.65) == {1, 3}
  assert draw(top_k=0, top_p=0.66) == {1, 3, 5}
  assert draw(top_k=0, top_p=0.1) == {1}
  assert draw(top_k=0, top_p=1.0) == {0, 1, 2, 3, 4, 5}


def test_eos_stops_a_sequence_and_masks_the_rest():
  config = tiny_config("qwen2")
  params = tiny_params(config)
  prompts = mixed_prompts(config.vocab_size)
  free = sampling.generate(config, params, prompts, max_new_tokens=10,
                           stop_ids=[])
  stop = int(free.tokens[0, 3])  # Sequence 0 emits this at step 3.
  out = sampling.generate(config, params, prompts, max_new_tokens=10,
                          stop_ids=[stop])
  for i in range(len(prompts)):
    hits = np.flatnonzero(free.tokens[i] == stop)
    if hits.size:
      end = hits[0]
      assert out.finish_reasons[i] == "stop"
      np.testing.assert_array_equal(out.tokens[i, :end + 1],
                                    free.tokens[i, :end + 1])
      assert out.mask[i, :end + 1].all() and not out.mask[i, end + 1:].any()
      assert (out.logprobs[i, end + 1:] == 0).all()
    else:
      assert out.finish_reasons[i] == "length" and out.mask[i].all()
  assert out.finish_reasons[0] == "stop"
  assert out.completions()[0] == free.tokens[0, :4].tolist()


def test_loop_ends_early_when_all_sequences_stopped():
  config = tiny_config("llama")
  params = tiny_params(config)
  calls = []
  first = sampling.generate(config, params, [[4, 5]], max_new_tokens=1,
                            stop_ids=[])
  out = sampling.generate(config, params, [[4, 5]], max_new_tokens=50,
                          stop_ids=[int(first.tokens[0, 0])],
                          on_tokens=lambda step, t, d: calls.append(int(step)))
  assert out.finish_reasons == ["stop"] and out.mask.sum() == 1
  assert calls == [0]  # One decode step ran, not fifty.


def test_same_bucket_does_not_compile_again():
  config = tiny_config("qwen3")
  params = tiny_params(config)
  sampling.generate(config, params, [[5] * 9, [6] * 12], max_new_tokens=4)
  before = sampling.compiled_programs()
  sampling.generate(config, params, [[7] * 10, [8] * 16], max_new_tokens=4)
  sampling.generate(config, params, [[9] * 11, [3] * 13], max_new_tokens=4)
  assert sampling.compiled_programs() == before
  # A longer bucket is a new program.
  sampling.generate(config, params, [[7] * 17, [8] * 3], max_new_tokens=4)
  assert sampling.compiled_programs() == before + 1


def test_sharded_generate_equals_unsharded():
  from hmx_jax import sharding
  from hmx_jax.models.loading import place_params
  from hmx_jax.models.hf_io import _get
  config = tiny_config("qwen3")
  params = tiny_params(config)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  abstract, _ = decoder.abstract_params(config)
  paths = [tuple(k.key for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(abstract)[0]]
  sharded = place_params(config, [(p, np.asarray(_get(params, p)))
                                  for p in paths], mesh)
  prompts = mixed_prompts(config.vocab_size)
  # XLA's dots on both sides (a sharded run never uses the CPU kernels,
  # which test_greedy_equals_full_forward_argmax checks on their own).
  expected = sampling.generate(config, params, prompts, max_new_tokens=6,
                               cpu_kernels=False)
  got = sampling.generate(config, sharded, prompts, max_new_tokens=6,
                          mesh=mesh)
  np.testing.assert_array_equal(got.tokens, expected.tokens)
  np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    (dict(prompts=[[1] * 250]), "exceeds the cache of 256"),
    (dict(top_p=0.0), "top_p=0.0 must be in (0, 1]"),
    (dict(top_p=1.5), "top_p=1.5 must be in (0, 1]"),
    (dict(top_k=-1), "top_k=-1"),
    (dict(max_new_tokens=0), "max_new_tokens=0"),
])
def test_bad_input_is_one_clear_error(kwargs, message):
  config = tiny_config("llama")
  args = dict(prompts=[[1, 2, 3]], max_new_tokens=8, max_total_len=256)
  args.update(kwargs)
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(
      ")", r"\)")):
    sampling.generate(config, None, args.pop("prompts"), **args)


def test_cli_unknown_checkpoint_step(tmp_path):
  import json
  from hmx_jax import checkpoints
  config = tiny_config("llama", num_layers=1)
  (tmp_path / "config.json").write_text(json.dumps(
      {"model": {"spec": "smollm2-135m-instruct"}}))
  checkpoints.save_params(str(tmp_path), 5, tiny_params(config))
  proc = subprocess.run(
      [sys.executable, "-m", "hmx_jax.cli", "chat", "--workdir",
       str(tmp_path), "--step", "7", "--prompt", "hi"],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("hmx-feel")]
  assert lines == [f"hmx-feel: error: {tmp_path}: no checkpoint for step 7; "
                   "available: 5"], proc.stderr
  assert "Traceback" not in proc.stderr
