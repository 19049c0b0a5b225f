"""Conversations that teach a model to answer from passages (experiment=grounded).

Each conversation is what a retrieval-grounded chat looks like at answer time (llm/retrieval/context.py): a system
message with numbered passages and where each is from, a user's question, and the assistant's answer, which is in
one of the passages; the others are distractors. Two sources:

- **made up** (`synthetic`): made-up entities ("vault 17", "project Tovaru"), attributes and values, written in many
  sentence forms and asked in many question forms, the answer's passage among passages about the same entity's
  other attributes, the same attribute of other entities and filler. No two runs of a seed differ; nothing is
  written by hand, so a model trained from scratch learns to find and copy the answer, not any fact.
- **your own** grounded conversations (`.jsonl` in data.paths): OpenAI messages with the passages in the system
  message, or a `context` field (a string, or a list of strings or {"path", "page", "text"}) that is put there.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from llm.retrieval.context import in_system_message, passages_text

ATTRIBUTES = (
    "code owner colour password budget location leader version port deadline motto capacity founder "
    "status rating weight key mascot supplier contact zone signal"
).split()
NOUNS = ["vault", "project", "room", "ship", "team", "station", "unit", "file", "site", "lab", "account", "route"]
SYLLABLES = ["ka", "lo", "mi", "ra", "tu", "ve", "zo", "pe", "ni", "sa", "do", "gu", "bre", "tal", "qui", "fen"]
WORDS = (
    "wren oak flint moss quill ember brook slate thorn cedar plume ridge amber frost maple onyx pearl "
    "raven sage tide violet willow zinc copper dune fern"
).split()
FACTS = [  # how a document states "the attribute of the entity is the value"
    "The {a} of {e} is {v}.",
    "{E}'s {a} is {v}.",
    "{E} has the {a} {v}.",
    "For {e}, the {a} is {v}.",
    "The {a} for {e} is set to {v}.",
    "We recorded {v} as the {a} of {e}.",
    "{E} uses {v} as its {a}.",
]
QUESTIONS = [  # how a user asks for it
    "What is the {a} of {e}?",
    "What's the {a} of {e}?",
    "Which {a} does {e} have?",
    "Tell me the {a} of {e}.",
    "What is {e}'s {a}?",
    "{E}: what is its {a}?",
    "Do you know the {a} of {e}?",
]
FILLER = [
    "The records were checked again last spring.",
    "Nobody has changed this since the review.",
    "See the appendix for the full list.",
    "This page was updated by the office.",
    "Copies of the notes are kept in the archive.",
    "The team met twice to agree on it.",
    "Earlier drafts said otherwise.",
    "It is listed with the other entries below.",
]
FOLDERS = ["notes", "reports", "docs", "archive", "scans", "mail"]
SUFFIXES = [".pdf", ".md", ".docx", ".txt", ".png"]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _entity(rng: random.Random) -> str:
    noun = rng.choice(NOUNS)
    return f"{noun} {rng.randint(1, 999)}" if rng.random() < 0.5 else f"{noun} {_name(rng)}"


def _value(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return f"{rng.choice(WORDS)}{rng.randint(1, 99)}"
    if kind < 0.6:
        return str(rng.randint(10, 99999))
    if kind < 0.8:
        return _name(rng)
    return f"{rng.choice(WORDS)}-{rng.choice(WORDS)}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fact(rng: random.Random, entity: str, attribute: str, value: str) -> str:
    """The fact in one of FACTS' forms; half the time the first, the answer's own form: a reply that copies the
    sentence it read is the first thing a small model learns, the other forms come after."""
    form = FACTS[0] if rng.random() < 0.5 else rng.choice(FACTS)
    return form.format(a=attribute, e=entity, E=_cap(entity), v=value)


def _passage(rng: random.Random, sentences: list[str]) -> str:
    """The sentences among filler, in a random order: a paragraph as an index's passage holds it."""
    text = sentences + rng.sample(FILLER, rng.randint(0, 2))
    rng.shuffle(text)
    return " ".join(text)


def _where(rng: random.Random) -> tuple[str, int | None]:
    suffix = rng.choice(SUFFIXES)
    path = f"{rng.choice(FOLDERS)}/{rng.choice(WORDS)}-{rng.randint(1, 99)}{suffix}"
    return path, rng.randint(1, 12) if suffix == ".pdf" else None


def _facts(rng: random.Random, n: int) -> dict[tuple[str, str], str]:
    """n facts {(entity, attribute): value}, no pair twice; alike as retrieval's hits are: many about one entity
    (its other attributes), some the same attribute of other entities."""
    facts: dict[tuple[str, str], str] = {}
    subject = _entity(rng)
    while len(facts) < n:
        entity = subject if rng.random() < 0.4 else _entity(rng)
        seen = [a for _, a in facts]
        attribute = rng.choice(seen) if seen and rng.random() < 0.3 else rng.choice(ATTRIBUTES)
        facts.setdefault((entity, attribute), _value(rng))
    return facts


def synthetic_conversation(
    rng: random.Random, passages: int, questions: int, fits: Callable[[list[dict[str, str]]], bool] | None = None
) -> list[dict[str, str]]:
    """One made-up grounded conversation: 1 to `passages` passages of one to three facts each, then 1 to `questions`
    questions about them, each answered from its passage; every other fact is a distractor. fits: whether a
    conversation fits the context; one that does not is made again with a passage fewer (then a question fewer),
    as retrieval trims passages to the context's budget."""
    n, asks = rng.randint(1, passages), rng.randint(1, questions)
    while True:
        sizes = [rng.randint(1, 3) for _ in range(n)]
        facts = _facts(rng, sum(sizes))
        pairs = iter(facts)
        blocks = [[next(pairs) for _ in range(size)] for size in sizes]
        texts = [_passage(rng, [_fact(rng, e, a, facts[e, a]) for e, a in block]) for block in blocks]
        messages = [{"role": "system", "content": passages_text([(*_where(rng), text) for text in texts])}]
        for entity, attribute in rng.sample(list(facts), min(asks, len(facts))):
            question = rng.choice(QUESTIONS).format(a=attribute, e=entity, E=_cap(entity))
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer(entity, attribute, facts[entity, attribute])})
        if fits is None or fits(messages) or (n == 1 and asks == 1):
            return messages
        n, asks = (n - 1, asks) if n > 1 else (n, asks - 1)


def answer(entity: str, attribute: str, value: str) -> str:
    """The reply a grounded conversation teaches: the question's words, then the value read from the passage."""
    return f"The {attribute} of {entity} is {value}."


def synthetic(
    n: int, passages: int, questions: int, seed: int, fits: Callable[[list[dict[str, str]]], bool] | None = None
) -> list[list[dict[str, str]]]:
    """n made-up grounded conversations, the same for the same seed."""
    rng = random.Random(seed)
    return [synthetic_conversation(rng, passages, questions, fits) for _ in range(n)]


def context_messages(messages: Sequence[Mapping[str, str]], context: object) -> list[dict[str, str]]:
    """A grounded .jsonl line's checked messages with its `context` (passages) put into the system message, as
    retrieval puts them there at answer time; ValueError for a context of another shape."""
    items = [context] if isinstance(context, str) else context
    if not isinstance(items, Sequence) or not items:
        raise ValueError("context: a string, or a non-empty list of strings or {path, page, text} objects")
    passages = []
    for item in items:
        if isinstance(item, str):
            passages.append(("context", None, item))
        elif isinstance(item, Mapping) and isinstance(item.get("text"), str):
            passages.append((str(item.get("path", "context")), item.get("page"), item["text"]))
        else:
            raise ValueError("context: each passage is a string or an object with a text")
    return in_system_message(messages, passages_text(passages))
