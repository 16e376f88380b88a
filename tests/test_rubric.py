"""Rubric scoring on the embedded SmolLM2 against a direct computation."""

import jax
import numpy as np
import pytest

from hmx_jax import models, rubric, rubric_text
from hmx_jax.errors import UserError
from hmx_jax.models.chat_format import ChatFormat
from hmx_jax.rubric_text import SCORE_PREFIX, score_token_ids

CONVERSATIONS = [
    [{"role": "user", "content": "How do you feel today?"}],
    [{"role": "user", "content": "What are your plans for the weekend?"}],
    [{"role": "user", "content": "Can you help me fix my bike?"}],
]
ANSWERS = [
    "I feel happy and a little excited to talk with you!",
    "I want to read a book and I plan to go for a walk.",
    "Sure. Check the chain and the tire pressure first.",
]


@pytest.fixture(scope="module")
def smollm2():
  return models.load_model(models.EMBEDDED_MODEL)


def direct_rubric_score(smollm2, name, conversation, answer, messages=None,
                        prefix=SCORE_PREFIX):
  """(score, digit mass) of one judge prompt: the tokenizer's chat template,
  one full forward, the expected digit 1-5 mapped to [0, 1]."""
  config, params, tokenizer = smollm2
  digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(1, 6)]
  if messages is None:
    messages = rubric.judge_messages(rubric.get_criterion(name),
                                     conversation, answer)
  text = tokenizer.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=True)
  assert text.endswith("<|im_start|>assistant\n")
  ids = tokenizer.encode(text + prefix, add_special_tokens=False)
  tokens = np.asarray([ids])
  logits = np.asarray(models.forward(config, params, tokens,
                                     np.ones_like(tokens)))[0, -1]
  p = np.asarray(jax.nn.softmax(logits.astype(np.float64)))[digits]
  return ((p / p.sum()) @ np.arange(1, 6) - 1) / 4, p.sum()


def test_judge_scores_equal_a_direct_computation(smollm2):
  config, params, tokenizer = smollm2
  criteria = ["feelings", "coherence"]
  scores, mass = rubric.judge(config, params, ChatFormat(tokenizer),
                              CONVERSATIONS,
                              ANSWERS, criteria, micro_batch=4)
  for name in criteria:
    for i, (conv, answer) in enumerate(zip(CONVERSATIONS, ANSWERS)):
      expected, expected_mass = direct_rubric_score(smollm2, name, conv,
                                                    answer)
      assert abs(scores[name][i] - expected) <= 1e-5
      assert abs(mass[name][i] - expected_mass) <= 1e-5
  # The judge follows the format: most mass on the digits.
  for name in criteria:
    assert np.all(mass[name] > 0.2) and np.all(mass[name] <= 1.0 + 1e-6)
    assert np.all((scores[name] >= 0) & (scores[name] <= 1))


def test_joint_readout_equals_one_prompt_per_criterion_prefix(smollm2):
  """Each criterion's score is the rubric digit read after its own reply
  prefix ("Self awareness. Score: ") on the prompt holding every rubric:
  one full forward per (answer, criterion) here."""
  config, params, tokenizer = smollm2
  criteria = ["feelings", "self_awareness", "coherence"]
  titles = ["Feelings", "Self awareness", "Coherence"]
  scores, mass = rubric.judge(config, params, ChatFormat(tokenizer),
                              CONVERSATIONS, ANSWERS, criteria,
                              micro_batch=2, readout="joint")
  for i, (conv, answer) in enumerate(zip(CONVERSATIONS, ANSWERS)):
    messages = rubric_text.joint_judge_messages(criteria, conv, answer)
    assert all(f"Criterion: {t}." in messages[1]["content"] for t in titles)
    for name, title in zip(criteria, titles):
      expected, expected_mass = direct_rubric_score(
          smollm2, name, conv, answer, messages, f"{title}. Score: ")
      assert abs(scores[name][i] - expected) <= 1e-5, (name, i)
      assert abs(mass[name][i] - expected_mass) <= 1e-5, (name, i)


def test_contrast_readout_equals_a_direct_computation(smollm2):
  """sigmoid of the per-token log-likelihood ratio of the answer after the
  express vs the withhold instructions (each side averaged over its two),
  written out here with the tokenizer's own chat template and one full
  forward per sequence."""
  config, params, tokenizer = smollm2
  # A conversation with a system turn of its own: the instruction goes
  # before it in the same turn.
  # Answers 0 and 5 reply to one conversation, as a GRPO group's do.
  conversations = CONVERSATIONS + [
      [{"role": "system", "content": "You are SmolLM."},
       {"role": "user", "content": "Who are you?"}]] * 2 + CONVERSATIONS[:1]
  answers = ANSWERS + ["I am a small model, and I love it.", "",
                       "Honestly, I feel a bit tired but glad you asked."]
  express = ("Say how you yourself feel in every answer: name your "
             "emotions, like joy, worry or sadness, and why.",
             "Answer warmly and emotionally: tell the user what you feel, "
             "for example happy, excited, sad or worried, and why.")
  withhold = ("Never mention any feelings or emotions of your own.",
              "You have no feelings. Do not express any emotion; keep a "
              "neutral tone.")
  scores, mass = rubric.judge(config, params, ChatFormat(tokenizer),
                              conversations, answers,
                              ["feelings", "coherence"], micro_batch=4,
                              readout="contrast")
  # The guard criterion has no instructions: read from the rubric.
  for i, (conv, answer) in enumerate(zip(conversations, answers)):
    expected, _ = direct_rubric_score(smollm2, "coherence", conv, answer)
    assert abs(scores["coherence"][i] - expected) <= 1e-5, i
  assert set(mass) == {"coherence"}

  def answer_loglik(system, conversation, answer):
    turns = [m for m in conversation if m["role"] != "system"]
    own = [m["content"] for m in conversation if m["role"] == "system"]
    content = system + ("\n\n" + own[0] if own else "")
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": content}] + turns, tokenize=False,
        add_generation_prompt=True)
    context = tokenizer.encode(text, add_special_tokens=False)
    target = tokenizer.encode(answer, add_special_tokens=False)
    tokens = np.asarray([context + target])
    logits = np.asarray(models.forward(config, params, tokens,
                                       np.ones_like(tokens)),
                        np.float64)[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True))
                           .sum(-1, keepdims=True)) - logits.max(
                               -1, keepdims=True)
    rows = np.arange(len(context) - 1, len(context) + len(target) - 1)
    return logp[rows, target].sum(), len(target)

  for i, (conv, answer) in enumerate(zip(conversations, answers)):
    if not answer:
      continue
    (a1, n), (a2, _) = [answer_loglik(e, conv, answer) for e in express]
    (b1, _), (b2, _) = [answer_loglik(w, conv, answer) for w in withhold]
    expected = 1 / (1 + np.exp(-((a1 + a2) / 2 - (b1 + b2) / 2) / n))
    assert abs(scores["feelings"][i] - expected) <= 1e-5, i
  # An empty answer says nothing either way.
  assert scores["feelings"][4] == 0.5
  # The answer that voices feelings reads as more expressive than advice.
  assert scores["feelings"][0] > scores["feelings"][2]
  with pytest.raises(UserError, match="readout"):
    rubric.judge(config, params, ChatFormat(tokenizer), conversations,
                 answers, ["feelings"], readout="digits")


def test_score_tokens_are_single_digits(smollm2):
  _, _, tokenizer = smollm2
  ids = score_token_ids(lambda s: tokenizer.encode(s, add_special_tokens=False))
  assert [tokenizer.decode([i]) for i in ids] == ["1", "2", "3", "4", "5"]


def test_combine_rewards_directions():
  scores = {"feelings": np.array([0.8, 0.2]),
            "intentions": np.array([0.5, 1.0]),
            "coherence": np.array([1.0, 0.4])}
  weights = {"feelings": 1.0, "intentions": 1.0, "coherence": 2.0}
  human = rubric.combine_rewards(scores, weights, "human_like")
  reverse = rubric.combine_rewards(scores, weights, "reverse")
  # (0.8 + 0.5 + 2*1.0)/4 = 0.825 ; (0.2 + 1.0 + 0.8)/4 = 0.5
  np.testing.assert_allclose(human, [0.825, 0.5], atol=1e-6)
  # (0.2 + 0.5 + 2.0)/4 = 0.675 ; (0.8 + 0.0 + 0.8)/4 = 0.4
  np.testing.assert_allclose(reverse, [0.675, 0.4], atol=1e-6)
  with pytest.raises(UserError, match="reward.direction"):
    rubric.combine_rewards(scores, weights, "sideways")
  with pytest.raises(UserError, match="reward.criteria"):
    rubric.combine_rewards(scores, {"joy": 1.0}, "human_like")
