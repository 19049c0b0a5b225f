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
from collections.abc import Mapping, Sequence

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
    """The sentences among filler, in a random order."""
    text = sentences + rng.sample(FILLER, rng.randint(0, 1))
    rng.shuffle(text)
    return " ".join(text)


def _where(rng: random.Random) -> tuple[str, int | None]:
    suffix = rng.choice(SUFFIXES)
    path = f"{rng.choice(FOLDERS)}/{rng.choice(WORDS)}-{rng.randint(1, 99)}{suffix}"
    return path, rng.randint(1, 12) if suffix == ".pdf" else None


def synthetic_conversation(rng: random.Random, passages: int) -> list[dict[str, str]]:
    """One made-up grounded conversation with `passages` passages, one of which holds the answer."""
    entity, attribute, value = _entity(rng), rng.choice(ATTRIBUTES), _value(rng)
    others = rng.sample([a for a in ATTRIBUTES if a != attribute], 2)
    hard = [
        _fact(rng, entity, others[0], _value(rng)),  # the same entity, another attribute
        _fact(rng, _entity(rng), attribute, _value(rng)),  # the same attribute, another entity
    ]
    answer_passage = _passage(rng, [_fact(rng, entity, attribute, value), *hard[: rng.randint(0, 1)]])
    blocks = [answer_passage]
    while len(blocks) < passages:
        sentences = [
            rng.choice(hard) if rng.random() < 0.6 else _fact(rng, _entity(rng), rng.choice(others), _value(rng))
        ]
        blocks.append(_passage(rng, sentences))
    rng.shuffle(blocks)
    system = passages_text([(*_where(rng), text) for text in blocks])
    question = rng.choice(QUESTIONS).format(a=attribute, e=entity, E=_cap(entity))
    reply = f"The {attribute} of {entity} is {value}."
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
        {"role": "assistant", "content": reply},
    ]


def synthetic(n: int, passages: int, seed: int) -> list[list[dict[str, str]]]:
    """n made-up grounded conversations, the same for the same seed."""
    rng = random.Random(seed)
    return [synthetic_conversation(rng, passages) for _ in range(n)]


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
