"""What every reader is: a function from a file to its text, or to a refusal with a reason.

    read(path, language, settings) -> Extraction    (raises Refused for an expected failure)

Readers run in worker processes (worker.py); kinds.py says which reader reads which files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm.errors import ConfigError

STRATEGIES = {"fast", "ocr_only", "hi_res", "auto"}  # unstructured's; hi_res needs layout models


@dataclass
class Settings:
    """What changes a reader's output, plus the guards. The keys of conf/data/default.yaml `ingest:`."""

    workers: int | None = None  # worker processes; None: one per core
    timeout_s: float = 300.0  # per file; the worker is killed past it
    max_memory_mb: int = 6144  # address-space limit of each worker (RLIMIT_AS, where the OS enforces it)
    max_file_mb: float = 512.0  # larger files are skipped
    max_image_pixels: int = 64_000_000  # larger images are refused as decompression bombs
    languages: list[str] = field(default_factory=lambda: ["eng"])  # tesseract languages
    # scanned: for PDF pages without a text layer; null turns OCR of PDFs off
    strategy: dict[str, str | None] = field(
        default_factory=lambda: {"pdf": "fast", "scanned": "ocr_only", "image": "ocr_only"}
    )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Settings:
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"data.ingest: unknown keys {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}"
            )
        s = cls(**{k: v for k, v in values.items() if k != "strategy"})
        s.strategy = {**s.strategy, **dict(values.get("strategy") or {})}
        s.languages = list(s.languages)
        for kind, name in s.strategy.items():
            if name is not None and name not in STRATEGIES:
                raise ConfigError(f"data.ingest.strategy.{kind}={name!r}: choose one of {sorted(STRATEGIES)} or null")
        return s


@dataclass
class Extraction:
    text: str
    strategy: str
    pages: int = 0  # PDF pages / image frames read, for throughput figures
    language: str | None = None  # code only


class Refused(Exception):
    """An expected failure: the file gets `status` with `reason`.

    transient: the cause lies outside the file (a missing tool or package, a time limit), so the
    outcome is not cached and the next run tries again.
    """

    def __init__(self, status: str, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.transient = transient


# (path, language hint from kinds.py, settings) -> its text; a module-level function or a picklable object,
# since it is sent to a worker process by reference
Read = Callable[[Path, str | None, Settings], Extraction]
