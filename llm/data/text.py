"""Plain text and source code: bytes in, the same characters out (indentation, blank lines, comments)."""

from __future__ import annotations

from pathlib import Path

from charset_normalizer import from_bytes

from llm.data.ingester import Extraction, Ingester, Refused, Settings


def read_text(data: bytes) -> tuple[str, str | None]:
    """Decode bytes verbatim. Returns (text, None), or ("", reason) when the bytes are not text."""
    if b"\x00" in data[:8192]:
        return "", "binary content (NUL bytes) in a text file"
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    best = from_bytes(data).best()  # detect the encoding (cp1251, shift-jis, ...)
    if best is None:
        return "", "binary content: no text encoding fits"
    if best.language == "Unknown":  # no language stood out: Western text, where cp1252 is by far the likeliest
        try:
            return data.decode("cp1252"), None
        except UnicodeDecodeError:
            pass
    return str(best), None


def read_verbatim(path: Path) -> str:
    text, problem = read_text(path.read_bytes())
    if problem:
        raise Refused("skipped", problem)
    return text


def _extract(path: Path, language: str | None, settings: Settings) -> Extraction:
    return Extraction(read_verbatim(path), "verbatim")


INGESTER = Ingester("text", 1, _extract)
