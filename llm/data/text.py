"""Plain text and source code: bytes in, the same characters out (indentation, blank lines, comments)."""

from __future__ import annotations

from pathlib import Path

from charset_normalizer import from_bytes

from llm.data.reader import Extraction, Refused, Settings

REPLACEMENT = "\ufffd"
# byte-order marks; UTF-32 LE's starts with UTF-16 LE's, so it is tried first
BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def read_text(data: bytes) -> tuple[str, str | None]:
    """Decode bytes verbatim. Returns (text, None), or ("", reason) when the bytes are not text.

    In order: a byte-order mark (UTF-8, -16, -32); UTF-8; UTF-8 with a few bad bytes (a cut-off last
    character, a stray byte) kept as U+FFFD; Western European cp1252; else the detected encoding.
    """
    for bom, encoding in BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace"), None
    if b"\x00" in data[:8192]:
        return "", "binary content (NUL bytes) in a text file"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        cut_off = e.reason == "unexpected end of data" and e.start >= len(data) - 3  # e.g. `head -c`
    text = data.decode("utf-8", errors="replace")
    bad = text.count(REPLACEMENT)
    if cut_off or sum(ord(c) > 127 for c in text) - bad > bad:  # more good multi-byte characters than bad bytes
        return text, None
    if (western := _western(data)) is not None:
        return western, None
    best = from_bytes(data).best()  # detect the encoding (cp1251, shift-jis, ...)
    if best is None:
        return "", "binary content: no text encoding fits"
    return str(best), None


def _western(data: bytes) -> str | None:
    """The text as cp1252 if it reads like Western European text: mostly ASCII letters, and no symbol
    wedged inside a word (cp1250 Polish read as cp1252 gives `Za¿ó³æ`; cp1251 Russian gives `Ïðèâåò`)."""
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return None
    letters = sum(c.isalpha() for c in text)
    accented = sum(c.isalpha() and not c.isascii() for c in text)
    if not letters or accented > 0.3 * letters:
        return None
    for i in range(1, len(text) - 1):
        c = text[i]
        if not c.isascii() and not c.isalpha() and text[i - 1].isalpha() and text[i + 1].isalpha():
            return None
    return text


def read_verbatim(path: Path) -> str:
    text, problem = read_text(path.read_bytes())
    if problem:
        raise Refused("skipped", problem)
    return text


def read(path: Path, language: str | None, settings: Settings) -> Extraction:
    return Extraction(read_verbatim(path), "verbatim")
