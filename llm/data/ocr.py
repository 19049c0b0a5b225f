"""What OCR needs from the OS: tesseract (and poppler's pdftoppm to render PDF pages)."""

from __future__ import annotations

import shutil

from llm.data.reader import Refused

INSTALL_HINT = {
    "tesseract": "Debian/Ubuntu: apt-get install tesseract-ocr tesseract-ocr-eng; macOS: brew install tesseract",
    "pdftoppm": "Debian/Ubuntu: apt-get install poppler-utils; macOS: brew install poppler",
}


def require(binary: str) -> None:
    """Refuse the file (not cached: installing the tool fixes it) when a system tool is missing."""
    if shutil.which(binary) is None:
        raise Refused("error", f"{binary} not found on PATH, needed for OCR ({INSTALL_HINT[binary]})", transient=True)


def elements_text(elements) -> str:
    return "\n".join(e.text for e in elements if getattr(e, "text", "").strip())
