"""Incremental detokenization: text released as tokens arrive, never half a UTF-8 character.

A byte-level BPE token can end in the middle of a multi-byte character; decoding then ends in
U+FFFD. That tail is held back until the next token completes it. Stop strings are found here too,
and the last len(longest stop) - 1 characters are held back so a stop string is never half-printed.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"


class TextStream:
    """One row's generated text. push(token) returns the text that became safe to show."""

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = [s for s in stop_strings if s]
        self.hold = max((len(s) for s in self.stop_strings), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # final text once stopped or finished
        self.emitted = 0  # characters of text already returned
        self.stopped = False  # a stop string was found

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith(REPLACEMENT):  # an unfinished multi-byte character: wait for its next byte
            text = text[:-1]
        cut = self._find_stop(text)
        if cut is not None:
            self.stopped, self.text = True, text[:cut]
            return self._release(cut)
        self.text = text
        return self._release(max(self.emitted, len(text) - self.hold))

    def finish(self) -> str:
        """Whatever is still held back, once no token will follow."""
        if not self.stopped:
            self.text = self.tokenizer.decode(self.ids)
        return self._release(len(self.text))

    def _find_stop(self, text: str) -> int | None:
        start = max(0, self.emitted - self.hold)  # earlier text was already searched
        hits = [i for s in self.stop_strings if (i := text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _release(self, end: int) -> str:
        chunk = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return chunk
