"""Plain text and source code: bytes in, the same characters out (indentation, blank lines, comments)."""

from __future__ import annotations

from charset_normalizer import from_bytes


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
    best = from_bytes(data).best()  # detect the encoding (latin-1, cp1252, shift-jis, ...)
    if best is None:
        return "", "could not detect a text encoding"
    return str(best), None
