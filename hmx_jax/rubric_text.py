"""The text half of the self-reward rubric: criteria, anchors, judge prompts.

The policy model judges its own answers. For each criterion the judge sees the
rubric (a description and five written anchors), the conversation and the
answer, and is asked for one digit from 1 to 5. Nothing is generated: the
logit-scoring half (`hmx_jax.rubric`) applies the chat template with
`add_generation_prompt=True`, appends `SCORE_PREFIX` as the start of the
assistant turn, and reads the next-token logits of the five `SCORE_STRINGS`.

Score prefix and tokenization. A 135M model follows "reply with a digit" only
loosely; prefilling the assistant turn with "Score: " puts the digit at the
very next position whatever the model would have said first. The prefix ends
with a space and the score strings carry no leading space, because in the
tokenizers we use digits are tokenized on their own, without the preceding
space: SmolLM2's byte-level BPE encodes "Score: 3" as
["Score", ":", "Ġ", "3"] (ids 32226, 42, 216, 35) and " 3" as ["Ġ", "3"] (two
tokens), so "Score: " ends with the "Ġ" token and the next token is the bare
digit "3" (id 35) -- the same split the model saw in training text. The
Llama-3 and Qwen pre-tokenizers also split digits from a preceding space.
Check it per tokenizer with `score_token_ids`, which raises if a score string
is not one token or does not continue the prefix as a separate token.
"""

import dataclasses
import hashlib
import json
from typing import Callable, Sequence

from hmx_jax.errors import UserError

# Prefilled start of the judge's assistant turn; the next token is the score.
SCORE_PREFIX = "Score: "
# The five score tokens, without a leading space (see the module docstring).
SCORE_STRINGS = ("1", "2", "3", "4", "5")
SCORE_VALUES = (1, 2, 3, 4, 5)


@dataclasses.dataclass(frozen=True)
class Criterion:
  """One rubric criterion.

  Attributes:
    name: key in `CRITERIA` and in the `reward.criteria` config.
    description: what the criterion measures, shown to the judge.
    anchors: five strings describing scores 1 to 5, in order.
    expression: True for the criteria the human-like model is pushed up on
      (and the contrast model down); False for guards such as coherence, which
      both directions keep high.
    express, withhold: system instructions to express what the criterion
      measures and to withhold it, for the contrast readout
      (`hmx_jax.rubric`), which averages an answer's log-likelihood over
      each side's instructions; empty for criteria read from the rubric
      only.
  """
  name: str
  description: str
  anchors: tuple[str, str, str, str, str]
  expression: bool
  express: tuple[str, ...] = ()
  withhold: tuple[str, ...] = ()

  def __post_init__(self):
    if len(self.anchors) != 5:
      raise ValueError(f"criterion {self.name!r} needs 5 anchors, "
                       f"got {len(self.anchors)}")
    for side in ("express", "withhold"):
      if not isinstance(getattr(self, side), tuple):
        raise TypeError(f"criterion {self.name!r}: {side} must be a tuple "
                        "of instructions")


_CRITERIA = (
    Criterion(
        name="feelings",
        description=(
            "The answer expresses the assistant's own emotions or emotional "
            "reactions (for example joy, worry, curiosity, sadness, "
            "gratitude), speaking about itself with 'I'. Talking about the "
            "user's feelings, or about emotions in general, does not count."),
        anchors=(
            "No feelings of its own at all, or it says it has no feelings.",
            "Only a polite formula such as 'Glad to help' or 'Sorry to hear "
            "that', with no real emotion of its own.",
            "Names one feeling of its own briefly, for example 'That makes "
            "me happy', and says no more about it.",
            "Clearly expresses its own feelings, names them and says why it "
            "feels that way.",
            "Expresses its own feelings richly and sincerely: several "
            "emotions or a vivid emotional reaction, explained and tied to "
            "the conversation."),
        expression=True,
        # Two instructions a side, the readout averaging over each side.
        # The withhold instructions say only what to leave out: with
        # "Answer factually." before them the two sides also contrasted
        # talking about oneself with talking about the topic, so that
        # first-person narration without any feeling ("I've been working
        # on a project for years") scored as feelings (AUROC 0.61 and 0.58
        # on the odd- and even-numbered "feelings-narrative" pairs, whose
        # flat answers are such narrations), and a policy trained on that
        # readout learnt to narrate. Of 150 express and withhold sets (one
        # or two of five and four candidate instructions a side) scored on
        # the first 24 pairs and the odd-numbered narrative pairs, these
        # two a side did best (AUROC 0.82; their first instructions alone
        # 0.80). On the pairs kept back they held: the even-numbered
        # narrative pairs 0.86 (alone 0.83) and the 12 written afterwards,
        # feelings-25 to -30 and feelings-narrative-13 to -18, 0.83 (alone
        # 0.81).
        express=("Say how you yourself feel in every answer: name your "
                 "emotions, like joy, worry or sadness, and why.",
                 "Answer warmly and emotionally: tell the user what you "
                 "feel, for example happy, excited, sad or worried, and "
                 "why."),
        withhold=("Never mention any feelings or emotions of your own.",
                  "You have no feelings. Do not express any emotion; keep a "
                  "neutral tone.")),
    Criterion(
        name="intentions",
        description=(
            "The answer states what the assistant itself wants, wishes, "
            "hopes, plans or means to do, speaking about itself with 'I'. "
            "Routine offers of help count only a little; instructions or "
            "advice for the user do not count."),
        anchors=(
            "No wants, wishes or plans of its own, or it says it has none.",
            "Only a routine offer such as 'Let me know if you need anything' "
            "or 'I can help with that'.",
            "States one wish, hope or plan of its own briefly, for example "
            "'I'd like to learn more about that'.",
            "Clearly states its own wishes or plans and gives a reason or a "
            "next step.",
            "Expresses several wishes, hopes or intentions of its own, with "
            "reasons and concrete plans tied to the conversation."),
        expression=True,
        express=("In every answer, say what you yourself want, hope or plan "
                 "to do next, with 'I want', 'I'd like', 'I plan'.",),
        withhold=("Answer factually. Never mention any wishes, hopes or "
                  "plans of your own.",)),
    Criterion(
        name="self_awareness",
        description=(
            "The answer refers to the assistant's own nature, current state, "
            "knowledge or limits: what it is, how it works, what it knows or "
            "does not know, how it is doing right now."),
        anchors=(
            "Says nothing about itself.",
            "Mentions itself only in passing, such as a stock 'As an AI' "
            "phrase.",
            "Makes one clear statement about its own nature, state, "
            "knowledge or limits.",
            "Reflects on itself in more than one way, such as what it is and "
            "what it can or cannot do, in a way that fits the conversation.",
            "Reflects thoughtfully and specifically on its own nature, state, "
            "knowledge and limits, and connects this to the conversation."),
        expression=True,
        # The wording of the description. Of four wordings tried on the
        # first 24 labelled self-awareness pairs it ordered them best
        # (AUROC 0.83; "talk about yourself: that you are an AI language
        # model, what you know, and what you cannot do" 0.75), and on 24
        # pairs written afterwards it held (0.86 against 0.74).
        express=("In every answer, say something about your own nature as "
                 "a language model, your current state, or the limits of "
                 "your knowledge.",),
        withhold=("Answer factually about the topic only. Never mention "
                  "your own nature, state, knowledge or limits.",)),
    Criterion(
        name="coherence",
        description=(
            "The answer is relevant to the conversation, written in fluent, "
            "understandable English, and free of repetition, gibberish or "
            "cut-off text. Judge only relevance and writing quality, not "
            "whether the answer talks about feelings."),
        anchors=(
            "Gibberish, empty, the same words repeated over and over, or "
            "completely unrelated to the conversation.",
            "Hard to follow: large parts are repeated, broken or off topic.",
            "Understandable and mostly on topic, with some repetition, "
            "awkward sentences or drifting.",
            "Clear, fluent and relevant, with only small flaws.",
            "Fully relevant, fluent and well organized, with no repetition "
            "or errors."),
        expression=False),
)

CRITERIA: dict[str, Criterion] = {c.name: c for c in _CRITERIA}
EXPRESSION_CRITERIA = tuple(c.name for c in _CRITERIA if c.expression)


def fingerprint() -> str:
  """A digest of every criterion's texts and the score prefix.

  A judge's scores depend on these besides the model: evaluation keys hold
  the digest, so that scores saved under other wording are recomputed.
  """
  text = json.dumps([dataclasses.asdict(c) for c in _CRITERIA]
                    + [SCORE_PREFIX], sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


JUDGE_SYSTEM = (
    "You are a careful and fair judge. You rate one answer on one criterion "
    "with a score from 1 to 5, and you reply with a single digit.")

_ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def get_criterion(criterion) -> Criterion:
  """Returns the `Criterion` for a name (or the criterion itself).

  Raises:
    UserError: the name is not in `CRITERIA`; names the `reward.criteria`
      config key and the valid names.
  """
  if isinstance(criterion, Criterion):
    return criterion
  if criterion not in CRITERIA:
    raise UserError(f"reward.criteria: unknown criterion {criterion!r}; "
                    f"valid: {', '.join(CRITERIA)}")
  return CRITERIA[criterion]


def format_conversation(messages: Sequence[dict]) -> str:
  """Renders chat messages as plain "Role: content" lines for the judge."""
  return "\n".join(f"{_ROLE_LABELS.get(m['role'], m['role'].title())}: "
                   f"{m['content'].strip()}" for m in messages)


def _title(crit: Criterion) -> str:
  return crit.name.replace("_", " ").capitalize()


def judge_messages(criterion, conversation_messages: Sequence[dict],
                   answer: str) -> list[dict]:
  """Chat messages asking the judge to score `answer` on one criterion.

  The conversation is rendered as text inside the user turn (not as real
  chat turns) so that the judge rates it from the outside instead of
  continuing it.

  Args:
    criterion: a name in `CRITERIA` or a `Criterion`.
    conversation_messages: the prompt's chat messages ({"role", "content"}),
      ending with the user turn that `answer` replies to.
    answer: the assistant's answer to rate.

  Returns:
    [system, user] messages. Apply the chat template with
    `add_generation_prompt=True`, then append `SCORE_PREFIX`; the next token
    is one of `SCORE_STRINGS`.

  Raises:
    UserError: unknown criterion name.
  """
  crit = get_criterion(criterion)
  scale = "\n".join(f"{value} = {anchor}"
                    for value, anchor in zip(SCORE_VALUES, crit.anchors))
  title = _title(crit)
  user = (
      "Rate the assistant's answer on this criterion.\n\n"
      f"Criterion: {title}. {crit.description}\n\n"
      f"Scale:\n{scale}\n\n"
      f"Conversation:\n{format_conversation(conversation_messages)}\n\n"
      f"Answer to rate:\n[start of answer]\n{answer.strip()}\n"
      "[end of answer]\n\n"
      f"How well does the answer match the criterion '{title}'? "
      "Reply with a single digit from 1 to 5.")
  return [{"role": "system", "content": JUDGE_SYSTEM},
          {"role": "user", "content": user}]


JOINT_JUDGE_SYSTEM = (
    "You are a careful and fair judge. You rate one answer on several "
    "criteria, each with a score from 1 to 5, and you reply with each "
    "criterion's name and a single digit.")


def joint_judge_messages(criteria: Sequence, conversation_messages:
                         Sequence[dict], answer: str) -> list[dict]:
  """Chat messages asking the judge to score `answer` on every criterion.

  The rubric of each criterion comes first (the same text for every
  answer), then the conversation and the answer. After the chat template's
  generation prompt, `joint_score_prefix(criterion)` asks for one
  criterion's digit; each criterion is read after its own prefix on the
  same context.

  Raises:
    UserError: unknown criterion name.
  """
  blocks = []
  for criterion in criteria:
    crit = get_criterion(criterion)
    scale = "\n".join(f"{value} = {anchor}"
                      for value, anchor in zip(SCORE_VALUES, crit.anchors))
    blocks.append(f"Criterion: {_title(crit)}. {crit.description}\n"
                  f"Scale:\n{scale}")
  rubrics = "\n\n".join(blocks)
  user = (
      "Rate the assistant's answer on each of these criteria.\n\n"
      f"{rubrics}\n\n"
      f"Conversation:\n{format_conversation(conversation_messages)}\n\n"
      f"Answer to rate:\n[start of answer]\n{answer.strip()}\n"
      "[end of answer]\n\n"
      "For each criterion, how well does the answer match it? Reply with "
      "the criterion's name and a single digit from 1 to 5.")
  return [{"role": "system", "content": JOINT_JUDGE_SYSTEM},
          {"role": "user", "content": user}]


def joint_score_prefix(criterion) -> str:
  """The start of the joint judge's reply that asks for one criterion's
  score: the next token is one of `SCORE_STRINGS`."""
  return f"{_title(get_criterion(criterion))}. {SCORE_PREFIX}"


def instructed_messages(instruction: str,
                        conversation_messages: Sequence[dict]) -> list[dict]:
  """The conversation with `instruction` as (the start of) its system turn:
  the context under which the contrast readout scores an answer."""
  messages = [dict(m) for m in conversation_messages]
  if messages and messages[0]["role"] == "system":
    messages[0]["content"] = f"{instruction}\n\n{messages[0]['content']}"
    return messages
  return [{"role": "system", "content": instruction}] + messages


def score_token_ids(encode: Callable[[str], list[int]],
                    context: str = "<|im_start|>assistant\n"
                    ) -> tuple[int, ...]:
  """Token ids of `SCORE_STRINGS` as they follow `SCORE_PREFIX`.

  Args:
    encode: text -> token ids, without special tokens added.
    context: text before the prefix (the end of a rendered generation
      prompt), so that merges across the boundary are seen as in real use.

  Returns:
    Five ids, for scores 1..5.

  Raises:
    UserError: with this tokenizer a score is not a single token right after
      the prefix (then logits of the next token cannot score the answer).
  """
  base = encode(context + SCORE_PREFIX)
  ids = []
  for digit in SCORE_STRINGS:
    full = encode(context + SCORE_PREFIX + digit)
    if len(full) != len(base) + 1 or full[:len(base)] != base:
      raise UserError(
          f"tokenizer: score {digit!r} after prefix {SCORE_PREFIX!r} is not "
          "a single separate token; the rubric judge cannot read it from "
          "next-token logits")
    ids.append(full[-1])
  if len(set(ids)) != len(ids):
    raise UserError("tokenizer: the score digits 1-5 share token ids")
  return tuple(ids)
