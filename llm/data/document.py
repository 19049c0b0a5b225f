"""A document: one extracted text, with where it came from. Ingestion makes them (pipeline.py); the tokenizer, the
token cache (tokens.py), the index (llm/retrieval) and the evaluation read them."""

from __future__ import annotations

from pathlib import Path


class Document:
    """One extracted text. `text` is read from its file on use, so a corpus never sits in memory whole."""

    def __init__(
        self,
        path: str,
        kind: str,
        text: str | None = None,
        sha256: str = "",
        *,
        text_file: Path | None = None,
        language: str | None = None,
        text_key: str = "",
        page_starts: dict[int, int] | None = None,
    ) -> None:
        self.path = path
        self.page_starts = page_starts  # paged formats (PDF): page (1-based) -> where its text starts
        self.kind = kind
        self.sha256 = sha256
        self.language = language
        self._text = text
        self.text_file = text_file
        # names this exact text: the source's hash with its reader's version and settings (the cache key)
        self.text_key = text_key or sha256

    @property
    def text(self) -> str:
        if self._text is not None:
            return self._text
        with open(self.text_file, encoding="utf-8", newline="") as f:  # as extracted: \r\n stays \r\n
            return f.read()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Document):
            return NotImplemented
        return (self.path, self.kind, self.sha256, self.text) == (other.path, other.kind, other.sha256, other.text)

    __hash__ = None  # mutable: compared by value, never hashed

    def __repr__(self) -> str:
        return f"Document({self.path!r}, {self.kind!r}, sha256={self.sha256[:12]!r})"
