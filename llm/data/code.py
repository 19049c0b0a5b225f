"""Source code: read verbatim (indentation, blank lines and comments exactly kept), language recorded.

unstructured's partition_text splits on blank lines and strips indentation, so it is not used here.
"""

from __future__ import annotations

from pathlib import Path

from llm.data.ingester import Extraction, Ingester, Settings
from llm.data.text import read_verbatim


def _extract(path: Path, language: str | None, settings: Settings) -> Extraction:
    return Extraction(read_verbatim(path), "verbatim", language=language)


INGESTER = Ingester("code", 2, _extract)  # 2: byte-order marks, damaged UTF-8, cp1252 first
