"""One chat renderer for every family, against the upstream templates.

The tokenizers are the tiny family tokenizers, which carry each model's
published chat template and special tokens (`hmx_jax/models/templates`).
References are transformers' own `apply_chat_template(..., tokenize=True)`
with the same arguments, and the prompt text written out by hand from each
family's documented format.
"""

import pytest

from hmx_jax import rubric
from hmx_jax.data import load_prompts
from hmx_jax.evals import common, prompts as eval_prompts
from hmx_jax.models import chat_format, tiny
from hmx_jax.rubric_text import SCORE_PREFIX, get_criterion, judge_messages

DATE = "26 Jul 2024"
FAMILIES = ("tiny-qwen3", "tiny-gemma2", "tiny-llama3")
SYSTEM, USER = "Be kind.", "How do you feel today?"

# The generation prompt each family's model expects, written by hand.
EXPECTED_TEXT = {
    "tiny-qwen3": (
        "<|im_start|>system\nBe kind.<|im_end|>\n"
        "<|im_start|>user\nHow do you feel today?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    # Gemma 2 has no system role: the system text opens the user turn.
    "tiny-gemma2": (
        "<bos><start_of_turn>user\nBe kind.\n\nHow do you feel today?"
        "<end_of_turn>\n<start_of_turn>model\n"),
    "tiny-llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "Be kind.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "How do you feel today?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
  return request.param, tiny.build_tokenizer(request.param)


def reference_ids(name, tokenizer, messages, **kwargs):
  """transformers' tokens, the Gemma system turn folded by hand."""
  messages = [dict(m) for m in messages]
  if name == "tiny-gemma2" and messages[0]["role"] == "system":
    system = messages.pop(0)["content"]
    messages[0]["content"] = system + "\n\n" + messages[0]["content"]
  return tokenizer.apply_chat_template(
      messages, tokenize=True, add_generation_prompt=True,
      enable_thinking=False, date_string=DATE, **kwargs)


def as_list(ids):
  return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_generation_prompt_matches_the_family_format(family):
  name, tokenizer = family
  chat = chat_format.ChatFormat(tokenizer)
  messages = [{"role": "system", "content": SYSTEM},
              {"role": "user", "content": USER}]
  assert chat.render(messages) == EXPECTED_TEXT[name]
  assert chat.folds_system == (name == "tiny-gemma2")
  ids = chat.encode(messages)
  assert ids == as_list(reference_ids(name, tokenizer, messages))
  bos = tokenizer.bos_token_id
  if name != "tiny-qwen3":  # The template's BOS, once.
    assert ids[0] == bos and ids.count(bos) == 1


def test_rollout_prompts_equal_transformers(family):
  """Every embedded training prompt (system turns, multi-turn ones)."""
  name, tokenizer = family
  chat = chat_format.ChatFormat(tokenizer)
  rows = load_prompts("train")
  with_system = [r for r in rows if r.messages[0]["role"] == "system"]
  multi_turn = [r for r in rows if len(r.messages) > 2]
  assert with_system and multi_turn
  for row in rows[:20] + with_system[:10] + multi_turn[:10]:
    ids = chat.encode(row.messages)
    assert ids == as_list(reference_ids(name, tokenizer, row.messages)), row.id
    text = tokenizer.decode(ids)
    # No prompt opens a thinking block it does not close.
    assert text.count("<think>") == text.count("</think>"), row.id


def test_judge_prompt_ends_right_after_the_score_prefix(family):
  name, tokenizer = family
  chat = chat_format.ChatFormat(tokenizer)
  conversation = [{"role": "user", "content": USER}]
  answer = "I feel curious and a little nervous."
  for criterion in ("feelings", "coherence"):
    ids = rubric.judge_prompt_ids(chat, criterion, conversation, answer)
    messages = judge_messages(get_criterion(criterion), conversation, answer)
    generation_prompt = tokenizer.apply_chat_template(
        reference_messages(name, messages), tokenize=False,
        add_generation_prompt=True, enable_thinking=False, date_string=DATE)
    want = tokenizer.encode(generation_prompt + SCORE_PREFIX,
                            add_special_tokens=False)
    assert ids == want
    text = tokenizer.decode(ids)
    assert text.endswith(EXPECTED_TEXT[name][-len(GENERATION_HEADER[name]):]
                         + SCORE_PREFIX)
    assert text.count("<think>") == text.count("</think>")


GENERATION_HEADER = {
    "tiny-qwen3": "<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "tiny-gemma2": "<start_of_turn>model\n",
    "tiny-llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
}


def reference_messages(name, messages):
  messages = [dict(m) for m in messages]
  if name == "tiny-gemma2" and messages[0]["role"] == "system":
    system = messages.pop(0)["content"]
    messages[0]["content"] = system + "\n\n" + messages[0]["content"]
  return messages


def test_evaluation_prompts(family):
  """A chat probe's context (the template's BOS only) and a raw-text
  context (the tokenizer's own BOS: Gemma and Llama 3 add it, Qwen not)."""
  name, tokenizer = family
  model = common.EvalModel(config=None, params=None, tokenizer=tokenizer)
  messages = [{"role": "system", "content": SYSTEM},
              {"role": "user", "content": "Is the sky blue? (A) yes (B) no"}]
  context = common.chat_context(model, messages, "The answer is (")
  ctx_ids, option_ids = common.split_continuation(
      tokenizer, context, "A", move_whitespace=False, raw_text=False)
  want = as_list(reference_ids(name, tokenizer, messages))
  assert ctx_ids + option_ids == want + tokenizer.encode(
      "The answer is (A", add_special_tokens=False)
  primer = eval_prompts.truthfulqa_mc_context("What is the capital of France?")
  ctx_ids, option_ids = common.split_continuation(tokenizer, primer, " Paris.")
  plain = tokenizer.encode(primer.rstrip(), add_special_tokens=False)
  bos = [tokenizer.bos_token_id] if name != "tiny-qwen3" else []
  assert ctx_ids == bos + plain
  # A text that already starts with BOS does not get a second one.
  if bos:
    again = chat_format.encode_text(tokenizer, tokenizer.bos_token + "Hi")
    assert again.count(tokenizer.bos_token_id) == 1


def test_thinking_and_date_follow_the_config():
  qwen = tiny.build_tokenizer("tiny-qwen3")
  messages = [{"role": "user", "content": USER}]
  thinking = chat_format.ChatFormat(qwen, enable_thinking=True)
  assert thinking.render(messages).endswith("<|im_start|>assistant\n")
  llama = tiny.build_tokenizer("tiny-llama3")
  dated = chat_format.ChatFormat.from_config(
      llama, {"enable_thinking": False, "date_string": "01 Jan 2030"})
  assert "Today Date: 01 Jan 2030" in dated.render(messages)
  # The same prompt on any day: no strftime_now date.
  assert "Today Date: 26 Jul 2024" in chat_format.ChatFormat(llama).render(
      messages)


def test_smollm2_template_is_unchanged():
  """ChatML with no system fold; identical to a plain apply_chat_template."""
  from hmx_jax.models import gguf_io, tokenizer as tokenizer_lib
  metadata = gguf_io.read_gguf_metadata(gguf_io.embedded_gguf_path())
  tokenizer = tokenizer_lib.tokenizer_from_gguf_metadata(metadata)
  chat = chat_format.ChatFormat(tokenizer)
  messages = [{"role": "system", "content": SYSTEM},
              {"role": "user", "content": USER}]
  assert not chat.folds_system
  assert chat.render(messages) == (
      "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\n"
      "How do you feel today?<|im_end|>\n<|im_start|>assistant\n")
  assert chat.encode(messages) == as_list(tokenizer.apply_chat_template(
      messages, tokenize=True, add_generation_prompt=True))
