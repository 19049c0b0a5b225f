"""Source code: read verbatim (indentation, blank lines and comments exactly kept), language recorded.

unstructured's partition_text splits on blank lines and strips indentation, so it is not used here.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm.data.reader import Extraction, Settings
from llm.data.text import read_verbatim


def read(path: Path, language: str | None, settings: Settings) -> Extraction:
    """language: from the file's extension (formats.py); `notebook` reads a Jupyter notebook's cells."""
    text = read_verbatim(path)
    if language == "notebook":
        return _notebook(text)
    return Extraction(text, "verbatim", language=language)


def _notebook(text: str) -> Extraction:
    """A Jupyter notebook as its cells' sources, in order; outputs (images in base64, logs) left out."""
    try:
        nb = json.loads(text)
        cells = [c for c in nb["cells"] if isinstance(c, dict)]
        language = nb.get("metadata", {}).get("kernelspec", {}).get("language") or "python"
    except (ValueError, KeyError, TypeError, AttributeError):
        return Extraction(text, "verbatim", language="json")  # not a notebook after all: the JSON as it is
    sources = ["".join(c["source"]) if isinstance(c.get("source"), list) else str(c.get("source", "")) for c in cells]
    return Extraction("\n\n".join(s for s in sources if s.strip()) + "\n", "cells", language=language)
