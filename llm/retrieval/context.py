"""Retrieval at answer time: the last user message is the question, the index's best passages go to the model in a
system message of its own chat template, as many as fit the context, and the answer names where they came from.

The passages are written the same way here and in the conversations that teach a model to answer from them
(experiment=grounded, llm/retrieval/grounded.py): what a model learns to read is what it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llm.chat_template import ChatTokens
from llm.errors import ConfigError
from llm.retrieval.index import FILE, Hit, Index

log = logging.getLogger(__name__)

INTRO = "Answer the question from these passages of the documents."


def source(path: str, page: int | None) -> str:
    """Where a passage is, as the model and the user read it: `notes/a.pdf, page 3`."""
    return path if page is None else f"{path}, page {page}"


def passages_text(passages: Sequence[tuple[str, int | None, str]]) -> str:
    """The system message's text for passages given as (path, page, text), numbered from 1."""
    blocks = [f"[{i}] {source(path, page)}\n{text}" for i, (path, page, text) in enumerate(passages, start=1)]
    return "\n\n".join([INTRO, *blocks])


def in_system_message(messages: Sequence[Mapping[str, str]], text: str) -> list[dict[str, str]]:
    """The conversation with text in its system message: added after the user's own system message where there is
    one (chat templates expect one system message, first), else a new first message."""
    messages = [dict(m) for m in messages]
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{text}"
        return messages
    return [{"role": "system", "content": text}, *messages]


def with_passages(messages: Sequence[Mapping[str, str]], hits: Sequence[Hit]) -> list[dict[str, str]]:
    """The conversation with the passages in its system message (in_system_message); unchanged without any."""
    if not hits:
        return [dict(m) for m in messages]
    return in_system_message(messages, passages_text([(h.path, h.page, h.text) for h in hits]))


def question_of(messages: Sequence[Mapping[str, str]]) -> str:
    """The last user message: what the index is asked."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def resolve_index(spec: str | Path, outputs_root: str | Path) -> Path:
    """retrieval.index: an index file; a folder holding one (python -m llm.index's out) or a run folder (its
    data/index.sqlite); a checkpoint (its run's); or `last`, the newest index of a run under outputs_root."""
    if str(spec) == "last":
        found = sorted(Path(outputs_root).rglob(FILE), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"retrieval.index=last: no {FILE} under {outputs_root}; train or run python -m llm.index")
        return found[-1]
    path = Path(spec).expanduser()
    if path.suffix == ".ckpt":
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if path.is_dir():
        for candidate in (path / FILE, path / "data" / FILE):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"retrieval.index={spec}: no {FILE} in that folder or its data/")
    if not path.is_file():
        raise ConfigError(f"retrieval.index={spec}: no such file or folder")
    return path


@dataclass
class Retriever:
    """An open index and how many passages to ask it for."""

    index: Index
    k: int

    @classmethod
    def from_config(cls, node: Mapping | None, outputs_root: str | Path = "outputs") -> Retriever | None:
        """conf's `retrieval` node: None when retrieval.index is null."""
        if not node or node.get("index") is None:
            return None
        k = node.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"retrieval.k={k!r} must be a whole number of passages, at least 1")
        path = resolve_index(node["index"], outputs_root)
        log.info("retrieval: %s, %d passages a question", path, k)
        return cls(Index(path), k)

    def search(self, messages: Sequence[Mapping[str, str]]) -> list[Hit]:
        """The k best passages for the conversation's last user message."""
        return self.index.search(question_of(messages), self.k)

    def ground(
        self, chat: ChatTokens, messages: Sequence[Mapping[str, str]], budget: int
    ) -> tuple[list[dict[str, str]], list[Hit]]:
        """The conversation with the best passages for its last user message, as many of the k as keep its prompt
        within budget tokens, and those passages."""
        return fit(chat, messages, self.search(messages), budget)


def fit(
    chat: ChatTokens, messages: Sequence[Mapping[str, str]], hits: Sequence[Hit], budget: int
) -> tuple[list[dict[str, str]], list[Hit]]:
    """The conversation with as many of hits as keep its prompt within budget tokens (best first: a passage that does
    not fit ends the list), and those passages."""
    used: list[Hit] = []
    for hit in hits:
        if len(chat.prompt_ids(with_passages(messages, [*used, hit]))) > budget:
            break
        used.append(hit)
    return with_passages(messages, used), used
