"""Conversations for fine-tuning a model to chat (experiment=sft): read, checked, split, tokenized, packed.

A conversations file is JSON Lines: each line one conversation, in OpenAI's format

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

or the pair form {"prompt": "...", "completion": "..."} (one user turn, one assistant turn). A `context` beside
"messages" (passages: a string, or a list of strings or {"path", "page", "text"}) goes into the system message as
retrieval puts passages there (llm/retrieval/grounded.py). A line that is not
JSON, names an unknown role or has no assistant turn is skipped, and the manifest says which file, which line and
why; the rest trains.

Conversations, not lines of text, are split between training and validation. Each is rendered with the chat
template and tokenized (llm/chat_template.py): only the assistant's tokens, the end of its turn included, are
targets; the system's and user's words and the markers that open each turn get the IGNORE label. Conversations are
packed into windows of block_size + 1 tokens one after another, never cut in half where they fit in a window of
their own; one longer than a window is cut into windows, and the log says so. Packing is for throughput only: a
conversation's positions start at 0 and it attends to itself alone, so its loss and logits are those it has
alone; and every epoch shuffles the conversations before packing them again (PackedWindows).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from llm.chat_template import ChatTokens, check_messages
from llm.retrieval.grounded import context_messages
from llm.tokenizer import IGNORE

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl",)


@dataclass
class Conversation:
    path: str
    line: int  # 1-based
    messages: list[dict[str, str]]


def parse_line(text: str) -> list[dict[str, str]]:
    """One line's conversation, or ValueError saying what is wrong with it."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError('not a JSON object: expected {"messages": [...]} or {"prompt": ..., "completion": ...}')
    if "messages" in obj:
        messages = check_messages(obj["messages"])
        if "context" in obj:
            messages = context_messages(messages, obj["context"])
    elif "prompt" in obj and "completion" in obj:
        if not isinstance(obj["prompt"], str) or not isinstance(obj["completion"], str):
            raise ValueError("prompt and completion must be strings")
        messages = [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
    else:
        raise ValueError('neither "messages" nor a "prompt" and "completion" pair')
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant turn: nothing to learn from")
    return messages


def read_conversations(files: Sequence[Path], root: Path | None = None) -> tuple[list[Conversation], list[dict]]:
    """Every good conversation of files, and the manifest: one record per file, one per bad line."""
    conversations: list[Conversation] = []
    records: list[dict] = []
    for file in files:
        name = str(file.relative_to(root)) if root is not None and file.is_relative_to(root) else str(file)
        if file.suffix not in SUFFIXES:
            records.append({"path": name, "kind": "conversations", "status": "skipped", "reason": "not a .jsonl file"})
            continue
        good = bad = 0
        with open(file, encoding="utf-8", errors="replace") as f:
            for number, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    conversations.append(Conversation(name, number, parse_line(text)))
                    good += 1
                except ValueError as e:
                    bad += 1
                    records.append(
                        {"path": name, "line": number, "kind": "conversations", "status": "error", "reason": str(e)}
                    )
        records.append(
            {
                "path": name,
                "kind": "conversations",
                "status": "ok" if good else "empty",
                "conversations": good,
                "bad_lines": bad,
            }
        )
        if bad:
            log.warning("%s: %d bad lines skipped (see the manifest), %d conversations kept", name, bad, good)
    return conversations, records


def split_conversations(
    conversations: Sequence[Conversation], val_fraction: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """A seeded shuffle, then the first val_fraction of them (at least one, given two or more) for validation."""
    order = list(conversations)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    return order[n_val:], order[:n_val]


def pack(
    examples: Sequence[tuple[list[int], list[bool]]],
    block_size: int,
    pad_id: int,
    token_bytes: np.ndarray,
    warn: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack (ids, is-target) sequences into windows: inputs (N, T), targets (N, T) with IGNORE where nothing is
    learned, positions (N, T) that restart at 0 where each sequence starts (each padding token is a sequence of its
    own), and the UTF-8 bytes each window's targets stand for (N,). A sequence that fits in what is left of the
    current window goes there, else it opens the next; one longer than a window is cut into windows. The
    positions are what keeps packed sequences apart: the model attends within each (model.document_mask). A window
    with no target (a piece of a cut conversation that holds no assistant token) is left out."""
    span = block_size + 1  # a window reads T + 1 tokens: inputs and targets shifted by one
    windows: list[list[tuple[list[int], list[bool]]]] = []  # each window: its sequences
    current: list[tuple[list[int], list[bool]]] = []
    used = cut = 0
    for seq, mask in examples:
        if len(seq) > span:
            cut += 1
            if current:
                windows.append(current)
                current, used = [], 0
            for start in range(0, len(seq) - 1, block_size):  # consecutive windows share their boundary token
                windows.append([(seq[start : start + span], mask[start : start + span])])
            continue
        if used + len(seq) > span:
            windows.append(current)
            current, used = [], 0
        current.append((list(seq), list(mask)))
        used += len(seq)
    if current:
        windows.append(current)
    if cut and warn:
        log.warning("%d conversations are longer than the context (%d tokens): each was cut into windows", cut, span)
    rows = []
    for window in windows:
        seq = [t for ids, _ in window for t in ids]
        mask = [m for _, learn in window for m in learn]
        targets = torch.tensor(seq[1:])
        scored = torch.tensor(mask[1:], dtype=torch.bool)
        # A target is the next token of the same sequence: the last token of one sequence does not predict the
        # first of the next (that token is a sequence's start, which nothing before it in the window leads to)
        firsts = np.cumsum([len(ids) for ids, _ in window])[:-1]  # where each sequence after the first starts
        scored[firsts - 1] = False
        if not scored.any():  # a piece of a cut conversation with no assistant token: nothing to learn (and 0/0)
            continue
        positions = torch.cat([torch.arange(len(ids)) for ids, _ in window])[:-1]
        rows.append((torch.tensor(seq[:-1]), torch.where(scored, targets, IGNORE), positions, scored, targets))
    x = torch.full((len(rows), block_size), pad_id, dtype=torch.long)
    y = torch.full((len(rows), block_size), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), block_size), dtype=torch.long)  # padding: position 0, each its own sequence
    n_bytes = torch.zeros(len(rows), dtype=torch.long)
    for w, (inputs, labels, positions, scored, targets) in enumerate(rows):
        n = len(inputs)
        x[w, :n], y[w, :n], pos[w, :n] = inputs, labels, positions
        n_bytes[w] = int(token_bytes[targets[scored].numpy()].sum())
    return x, y, pos, n_bytes


def tokenize(conversations: Sequence[Conversation], chat: ChatTokens) -> list[tuple[list[int], list[bool]]]:
    return [chat.training_example(c.messages) for c in conversations]


class PackedWindows(Dataset):
    """Conversations packed into windows, packed anew every epoch: items keyed by (epoch, k) (EpochSampler) or a
    plain k (epoch 0) are dicts of "input", "target", "pos" (where each conversation starts: attention stays inside
    it) and, with with_bytes, "bytes" (the UTF-8 bytes of the window's targets, what val/bpb divides by).

    With a seed, epoch e shuffles the conversations with a generator seeded by (seed, e), then packs them: each
    epoch puts other conversations side by side, and a resumed run packs its epoch as the killed one did. The
    number of windows can change from one epoch to the next (windows(epoch)); seed=None packs in the given
    order, the same windows every epoch (validation)."""

    def __init__(
        self,
        examples: Sequence[tuple[list[int], list[bool]]],
        block_size: int,
        pad_id: int,
        token_bytes: np.ndarray,
        seed: int | None,
        with_bytes: bool,
    ) -> None:
        self.examples, self.block_size, self.pad_id, self.token_bytes = list(examples), block_size, pad_id, token_bytes
        self.seed, self.with_bytes = seed, with_bytes
        self._epoch, self._packed = 0, pack(self._order(0), block_size, pad_id, token_bytes)  # warns of cuts once

    def _order(self, epoch: int) -> list[tuple[list[int], list[bool]]]:
        order = list(self.examples)
        if self.seed is not None:
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def packed(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, targets, positions, bytes) of every window of epoch."""
        if self.seed is not None and epoch != self._epoch:  # one packing held: the epoch being trained
            self._epoch, self._packed = (
                epoch,
                pack(self._order(epoch), self.block_size, self.pad_id, self.token_bytes, False),
            )
        return self._packed

    def windows(self, epoch: int) -> int:
        return len(self.packed(epoch)[0])

    def __len__(self) -> int:
        return self.windows(0)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, k = key if isinstance(key, tuple) else (0, key)
        x, y, pos, n_bytes = self.packed(epoch)
        item = {"input": x[k], "target": y[k], "pos": pos[k]}
        if self.with_bytes:
            item["bytes"] = n_bytes[k]
        return item
