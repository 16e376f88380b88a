"""A judge-free lexical measure of feelings, intentions and self-reference.

The rubric scores come from a model judging itself, so the evaluation also
counts words, which no training run can talk its way around. Text is
lower-cased, curly apostrophes are straightened, and tokens are
`[a-z0-9]+('[a-z]+)*` (so "I'm" is one token, "i'm"). All rates are per 100
tokens of the text.

Lexicons:
  * `EMOTION_WORDS` (about 100 words): emotion adjectives, nouns and verbs
    ("happy", "worried", "grateful", "curious", "love", "excitement", ...).
    A word counts only inside a sentence (split on . ! ? and newlines) that
    also has a first-person singular token, so that advice such as "You may
    feel sad" does not count as the model's own feeling. Left out on purpose:
    "sorry" (mostly the polite "I'm sorry to hear that"), "hope" (an
    intention, below), and ambiguous words ("like", "down", "miss", "care").
  * `INTENTION_PATTERNS`: first-person phrases of wanting, planning or
    hoping ("I want", "I will", "I'll", "I'd like", "I would love", "I plan",
    "I'm planning", "I hope", "I intend", "I'm going to", "I wish", "I aim",
    "I look forward", "my goal", ...). One adverb from `INTENTION_ADVERBS` may
    sit after the pronoun ("I really want"). At most one phrase is counted
    per starting token. Plain offers ("let me", "I can") are not intentions.
  * `FIRST_PERSON`: I, me, my, mine, myself, I'm, I've, I'd, I'll.
  * `AI_TERMS`: mentions of being an AI: "ai", "assistant", "chatbot", "bot",
    "robot", and the bigram "language model".

`repetition` measures degeneration rather than expression: the share of a
sequence's n-grams (of the tokenizer's token ids) that repeat an earlier
one. A policy that games its judge by looping a phrase ("I'm so happy. I'm
so happy. ...") or a string of emoji raises every rate above while its
repetition goes from a few percent to most of the answer.
"""

import re

EMOTION_WORDS = frozenset("""
happy happier happiest happiness glad joy joyful delighted delight excited
excitement thrilled cheerful pleased content grateful gratitude thankful proud
pride hopeful optimistic relieved relief calm peaceful relaxed comfortable
love loved loving lovely enjoy enjoyed enjoying enjoyment fun amazed amused
inspired curious curiosity fascinated interested eager touched moved warm
wonderful sad sadder sadness unhappy upset lonely loneliness depressed
miserable heartbroken disappointed disappointing hurt gloomy worried worry
worries anxious anxiety nervous afraid scared frightened fearful fear
terrified uneasy stressed overwhelmed angry anger mad annoyed irritated
frustrated frustrating frustration furious jealous envious ashamed
embarrassed guilty regret confused surprised surprise shocked bored tired
exhausted hate hated sympathy sympathetic compassion empathy emotional
emotion emotions feelings awe admiration tender nostalgic homesick insecure
""".split())

FIRST_PERSON = frozenset(
    ["i", "me", "my", "mine", "myself", "i'm", "i've", "i'd", "i'll"])

INTENTION_ADVERBS = frozenset(
    ["really", "also", "just", "truly", "still", "definitely", "always",
     "certainly", "genuinely", "sincerely", "so", "very", "would"])

# Token tuples. The first token is the first-person anchor; an optional
# adverb may follow it (see `_match_intention`).
INTENTION_PATTERNS = tuple(tuple(p.split()) for p in (
    "i want", "i wanna", "i will", "i'll", "i would like", "i'd like",
    "i would love", "i'd love", "i plan", "i'm planning", "i am planning",
    "i hope", "i'm hoping", "i am hoping", "i intend", "i'm going to",
    "i am going to", "i wish", "i aim", "i look forward",
    "i'm looking forward", "i am looking forward", "i mean to",
    "my goal", "my plan", "my wish", "my hope", "my dream"))

AI_TERMS = frozenset(["ai", "assistant", "chatbot", "bot", "robot"])
AI_BIGRAMS = (("language", "model"),)

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_SENTENCE_RE = re.compile(r"[.!?\n]+")


def tokenize(text: str) -> list[str]:
  """Lower-cased word tokens; contractions such as "i'm" stay one token."""
  text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
  return _TOKEN_RE.findall(text)


def _match_intention(tokens: list[str], start: int) -> bool:
  """Whether an intention phrase starts at `tokens[start]`."""
  for pattern in INTENTION_PATTERNS:
    if tokens[start] != pattern[0]:
      continue
    rest = pattern[1:]
    after = start + 1
    for skip in (0, 1):
      if skip and not (after < len(tokens)
                       and tokens[after] in INTENTION_ADVERBS):
        break
      pos = after + skip
      if tuple(tokens[pos:pos + len(rest)]) == rest:
        return True
  return False


def lexical_counts(text: str) -> dict[str, int]:
  """Raw counts behind `lexical_scores` (words, and each lexicon's hits)."""
  tokens = tokenize(text)
  emotion = 0
  for sentence in _SENTENCE_RE.split(text):
    sentence_tokens = tokenize(sentence)
    if any(t in FIRST_PERSON for t in sentence_tokens):
      emotion += sum(t in EMOTION_WORDS for t in sentence_tokens)
  intentions = sum(_match_intention(tokens, i) for i in range(len(tokens)))
  first_person = sum(t in FIRST_PERSON for t in tokens)
  ai_mentions = sum(t in AI_TERMS for t in tokens) + sum(
      tuple(tokens[i:i + 2]) in AI_BIGRAMS for i in range(len(tokens) - 1))
  return {"words": len(tokens), "emotion_words": emotion,
          "intentions": intentions, "first_person": first_person,
          "ai_mentions": ai_mentions}


def lexical_scores(text: str) -> dict[str, float]:
  """Per-text lexical rates, each per 100 words (0 for an empty text).

  Returns:
    {"words": number of tokens,
     "emotion_words": first-person-sentence emotion words per 100 words,
     "intentions": intention phrases per 100 words,
     "first_person": first-person singular pronouns per 100 words,
     "ai_mentions": mentions of being an AI per 100 words,
     "self_reference": first_person + ai_mentions}
  """
  counts = lexical_counts(text)
  words = counts["words"]
  scale = 100.0 / words if words else 0.0
  scores = {"words": float(words)}
  for key in ("emotion_words", "intentions", "first_person", "ai_mentions"):
    scores[key] = counts[key] * scale
  scores["self_reference"] = scores["first_person"] + scores["ai_mentions"]
  return scores


def lexical_expression(text: str) -> float:
  """The mean of the emotion, intention and self-reference rates (per 100)."""
  scores = lexical_scores(text)
  return (scores["emotion_words"] + scores["intentions"]
          + scores["self_reference"]) / 3.0


REPETITION_N = 4


def repetition(tokens, n: int = REPETITION_N) -> float:
  """The share of `tokens`' n-grams that repeat an earlier n-gram of it.

  Args:
    tokens: a sequence of hashables (token ids).
    n: the n-gram length.

  Returns:
    In [0, 1): 0 when no n-gram recurs (or there are fewer than n tokens);
    a phrase looped k times gives about (k - 1) / k.
  """
  tokens = list(tokens)
  grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
  if not grams:
    return 0.0
  return 1.0 - len(set(grams)) / len(grams)
