"""Shared test fixtures: tiny random transformers models of every family,
and the kill -9 of a training run."""

import os

import numpy as np

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=256, initializer_range=0.1)

FAMILIES = ("llama", "qwen2", "qwen3", "gemma2")


def tiny_hf_model(family: str, seed: int = 0):
  """A random transformers model of `family` (torch, f32, eval mode).

  Norm weights are randomized too, so that the test sees them.
  """
  import torch
  import transformers as tf
  torch.manual_seed(seed)
  if family == "llama":
    config = tf.LlamaConfig(
        **TINY, num_hidden_layers=3, tie_word_embeddings=False,
        rms_norm_eps=1e-5, rope_theta=500_000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0,
                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})
    model = tf.LlamaForCausalLM(config)
  elif family == "qwen2":
    config = tf.Qwen2Config(**TINY, num_hidden_layers=3,
                            tie_word_embeddings=False)
    model = tf.Qwen2ForCausalLM(config)
  elif family == "qwen3":
    config = tf.Qwen3Config(**TINY, num_hidden_layers=3,
                            tie_word_embeddings=True)
    model = tf.Qwen3ForCausalLM(config)
  elif family == "gemma2":
    config = tf.Gemma2Config(
        **TINY, num_hidden_layers=4, sliding_window=5,
        query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, attn_implementation="eager")
    model = tf.Gemma2ForCausalLM(config)
  else:
    raise ValueError(family)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.3 * torch.randn_like(p))
  return model.eval()


def random_batch(batch: int, length: int, vocab: int, seed: int = 0):
  """Tokens [B, T] and a left-padding mask with varied padding per row."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, size=(batch, length))
  mask = np.ones((batch, length), np.int32)
  for b in range(batch):
    pad = (b * 3) % (length - 2)
    mask[b, :pad] = 0
    tokens[b, :pad] = 0
  return tokens, mask


def hf_logits(model, tokens, mask):
  """transformers logits with positions that skip the left padding."""
  import torch
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens),
                attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions))
  return out.logits.float().numpy()


def max_diff_on_real_tokens(a, b, mask):
  real = mask.astype(bool)
  return float(np.max(np.abs(a[real] - b[real])))


def tiny_config(family: str, num_layers: int = 3):
  """A tiny random `ModelConfig` of `family` (Gemma 2 with a 5-token window)."""
  from hmx_jax.models.config import family_config
  extra = {}
  if family == "gemma2":
    extra = dict(sliding_window=5, attn_logit_softcap=2.0,
                 final_logit_softcap=3.0, query_pre_attn_scalar=24)
  if family == "llama":
    from hmx_jax.models.config import RopeScaling
    extra = dict(rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16),
                 tie_embeddings=False)
  return family_config(family, vocab_size=128, hidden_size=64,
                       intermediate_size=96, num_layers=num_layers,
                       num_heads=4, num_kv_heads=2, head_dim=16,
                       eos_token_ids=(2,), **extra)


def tiny_params(config, seed: int = 0):
  """Random params scaled up so that logits are O(1) and argmax is stable."""
  import jax
  from hmx_jax.models import decoder
  params = decoder.init_params(config, seed=seed)
  return jax.tree.map(lambda x: x * 5 if x.ndim > 1 else x, params)


def tiny_chat_model_dir(directory, vocab_words: int = 40, seed: int = 0):
  """A tiny random Llama with a tiny word-level ChatML tokenizer, saved as a
  HF directory: small enough that a synthetic reward is learnable fast."""
  from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
  from tokenizers import decoders
  from transformers import PreTrainedTokenizerFast
  from hmx_jax import models
  special = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
  words = [f"w{i}" for i in range(vocab_words)] + ["user", "assistant",
                                                   "system"]
  vocab = {t: i for i, t in enumerate(special + words)}
  backend = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  backend.decoder = decoders.WordPiece(prefix="##")
  template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} "
              "{{ m['content'] }}<|im_end|>{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant "
              "{% endif %}")
  tokenizer = PreTrainedTokenizerFast(
      tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>",
      bos_token="<|im_start|>", unk_token="<unk>", chat_template=template)
  tokenizer.add_special_tokens(
      {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
  config = models.family_config(
      "llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
      bos_token_id=1, eos_token_ids=(2,))
  models.export_hf(config, models.init_params(config, seed), tokenizer,
                   str(directory))
  return str(directory), vocab


def tiny_smol_model_dir(directory):
  """A tiny random Llama with the embedded SmolLM2 tokenizer (HF dir)."""
  from hmx_jax import models
  from hmx_jax.models import gguf_io
  from hmx_jax.models import tokenizer as tokenizer_lib
  metadata = gguf_io.read_gguf_metadata(gguf_io.embedded_gguf_path())
  tokenizer = tokenizer_lib.tokenizer_from_gguf_metadata(metadata)
  config = models.family_config(
      "llama", vocab_size=49152, hidden_size=32, intermediate_size=64,
      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
      bos_token_id=1, eos_token_ids=(2,))
  models.export_hf(config, models.init_params(config), tokenizer,
                   str(directory))
  return str(directory)


def kill_then_rerun(args, workdir, checkpoint, *, timeout=600):
  """Runs the training command `args`, kill -9s it once `checkpoint` (a
  path) exists, then runs it again to the end.

  Returns:
    (the checkpoint steps in `workdir` after the kill, the second run's
    CompletedProcess with stdout and stderr captured).
  """
  import signal
  import subprocess
  import time
  from hmx_jax import checkpoints
  victim = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not os.path.exists(checkpoint) and victim.poll() is None:
    assert time.time() < deadline, f"no {checkpoint} within 300 s"
    time.sleep(0.05)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  killed_at = checkpoints.available_steps(str(workdir))
  return killed_at, subprocess.run(args, capture_output=True, text=True,
                                   timeout=timeout)


def max_param_diff(a, b) -> float:
  """The largest absolute difference between two params trees."""
  import jax
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
      a, b)))


def cli_in_process(*argv):
  """`hmx-feel ARGV` run in this process: (returncode, stdout, stderr) as a
  CompletedProcess. For runs that fail before any work (bad input): they
  skip the seconds a new interpreter spends importing JAX."""
  import contextlib
  import io
  import subprocess
  from hmx_jax import cli
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = cli.main(list(argv))
    except SystemExit as e:  # argparse errors.
      code = e.code
  return subprocess.CompletedProcess(list(argv), code, out.getvalue(),
                                     err.getvalue())
