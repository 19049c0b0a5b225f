"""A document's text cut into passages: what the index stores and what a question is answered from.

A passage is about a paragraph: paragraphs (text between blank lines) are taken whole and short ones joined up to
`size` characters; a paragraph longer than `size` is cut into pieces of `size` characters at word boundaries, each
piece repeating the last `overlap` characters of the one before, so a sentence cut in two is whole in one of them.
A passage never crosses a page: a paged document (a PDF, its text layer or its OCR) is cut page by page, and every
passage carries the page it is on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

SIZE = 600  # characters: a paragraph or two, a few sentences of context around an answer
OVERLAP = 120  # characters a cut paragraph's next piece repeats
_PARAGRAPHS = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Passage:
    text: str
    page: int | None  # 1-based, for paged formats; None where the format has no pages


def split_passages(
    text: str, page_starts: Mapping[int, int] | None = None, size: int = SIZE, overlap: int = OVERLAP
) -> list[Passage]:
    """text's passages in order. page_starts: page (1-based) -> where its text starts (Document.page_starts)."""
    if not 0 <= overlap < size:
        raise ValueError(f"overlap={overlap} must be in [0, size={size})")
    if not page_starts:
        return [Passage(t, None) for t in _pack(_paragraphs(text), size, overlap)]
    starts = sorted(page_starts.items(), key=lambda item: item[1])
    out = []
    for i, (page, start) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else len(text)
        out += [Passage(t, page) for t in _pack(_paragraphs(text[start:end]), size, overlap)]
    return out


def _paragraphs(text: str) -> Iterator[str]:
    for paragraph in _PARAGRAPHS.split(text):
        paragraph = paragraph.strip()
        if paragraph:
            yield paragraph


def _pack(paragraphs: Iterator[str], size: int, overlap: int) -> Iterator[str]:
    """Short paragraphs joined up to size characters; a long one cut into overlapping pieces."""
    held = ""
    for paragraph in paragraphs:
        if len(paragraph) > size:
            if held:
                yield held
                held = ""
            yield from _cut(paragraph, size, overlap)
        elif held and len(held) + 2 + len(paragraph) > size:
            yield held
            held = paragraph
        else:
            held = f"{held}\n\n{paragraph}" if held else paragraph
    if held:
        yield held


def _cut(text: str, size: int, overlap: int) -> Iterator[str]:
    """Pieces of at most size characters, ending at a space where there is one, each starting overlap characters
    before the previous one ended (at a word's start)."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            space = text.rfind(" ", start + size // 2, end)
            end = space if space > 0 else end
        yield text[start:end].strip()
        if end >= len(text):
            return
        back = max(end - overlap, start + 1)
        space = text.find(" ", back, end)
        start = space + 1 if 0 <= space < end else back
