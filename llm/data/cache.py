"""Extraction results on disk, keyed by content hash + the kind and version of its reader + the settings it uses.

Each entry is <key>.json (the outcome) and, for `ok`, <key>.txt (the text), written atomically.
Outcomes caused by something outside the file (a missing tool) are not stored; outcomes of a time
or memory limit are reused only while the limits are no larger than those they ran under.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llm.atomic import write_text
from llm.data.reader import Settings


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def key(sha256: str, kind: str, version: int, settings: Any, language: str | None) -> str:
        """kind, version, settings: from the file's row in the registry (formats.py)."""
        return hashlib.sha256(json.dumps([sha256, kind, version, settings, language]).encode()).hexdigest()

    def _meta_file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def text_file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.txt"

    def get(self, key: str, settings: Settings) -> dict[str, Any] | None:
        try:
            meta = json.loads(self._meta_file(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta.get("limit") and (
            settings.timeout_s > meta.get("timeout_s", 0) or settings.max_memory_mb > meta.get("max_memory_mb", 0)
        ):
            return None  # a larger limit may now succeed
        if meta.get("status") == "ok" and not self.text_file(key).exists():
            return None
        return meta

    def put(self, key: str, outcome: dict[str, Any], settings: Settings) -> None:
        if outcome.get("transient"):
            return
        meta = {k: v for k, v in outcome.items() if k != "text"}
        meta["chars"] = len(outcome.get("text") or "")
        if meta.get("limit"):
            meta["timeout_s"] = settings.timeout_s
            meta["max_memory_mb"] = settings.max_memory_mb
        folder = self.root / key[:2]
        folder.mkdir(parents=True, exist_ok=True)
        if outcome["status"] == "ok":
            write_text(self.text_file(key), outcome["text"], errors="replace")
        write_text(self._meta_file(key), json.dumps(meta, ensure_ascii=False))
