"""What every reader is: a function from a file to its text, or to a refusal with a reason.

    read(path, language, settings) -> Extraction    (raises Refused for an expected failure)

Readers run in worker processes (worker.py); formats.py says which reader reads which files.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.errors import ConfigError

BACKENDS = ("local", "ray")
STRATEGIES = {"pdfium", "fast", "ocr_only", "hi_res", "auto"}  # pdfium: pdf.py's text layer; the rest unstructured's


@dataclass
class Settings:
    """What changes a reader's output, plus the guards: the `data.ingest` keys of conf/data/default.yaml.

    The YAML holds the defaults, once: `from_mapping` lays the given values over them (the CLI and tests use it).
    """

    workers: int | None  # worker processes; None: one per core (Ray: one per CPU of the cluster)
    backend: str  # local (a pool of processes on this machine) | ray (actors on a Ray cluster)
    address: str | None  # backend=ray: the cluster (ray://host:10001, auto); None: a local Ray in this process
    timeout_s: float  # per file; the worker is killed past it
    max_memory_mb: int  # address-space limit of each worker (RLIMIT_AS, where the OS enforces it)
    max_file_mb: float  # larger files are skipped
    max_image_pixels: int  # larger images are refused as decompression bombs
    languages: list[str]  # tesseract languages
    strategy: dict[str, str | None]  # unstructured strategy per kind; scanned: null turns OCR of PDFs off

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> Settings:
        """The YAML's defaults with `values` laid over them; strategy is merged key by key."""
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"data.ingest: unknown keys {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}"
            )
        merged = {**yaml_defaults(), **values}
        merged["strategy"] = {**yaml_defaults()["strategy"], **dict(values.get("strategy") or {})}
        merged["languages"] = list(merged["languages"])
        s = cls(**merged)
        if s.backend not in BACKENDS:
            raise ConfigError(f"data.ingest.backend={s.backend!r}: choose one of {list(BACKENDS)}")
        for kind, name in s.strategy.items():
            if name is not None and name not in STRATEGIES:
                raise ConfigError(f"data.ingest.strategy.{kind}={name!r}: choose one of {sorted(STRATEGIES)} or null")
        return s


@functools.cache
def yaml_defaults() -> dict[str, Any]:
    """The `ingest:` node of conf/data/default.yaml: the one place the ingest defaults are written."""
    from omegaconf import OmegaConf

    from llm.config import config_dir

    return OmegaConf.to_container(OmegaConf.load(config_dir() / "data" / "default.yaml").ingest)


@dataclass
class Extraction:
    text: str
    strategy: str
    pages: int = 0  # PDF pages / image frames read, for throughput figures
    language: str | None = None  # code only
    rotated: dict[int, int] | None = None  # OCR: page (1-based) -> degrees it was turned clockwise to stand upright
    page_starts: dict[int, int] | None = None  # paged formats: page (1-based) -> where its text starts in `text`
    # archives (archive.py): the members, each copied into the run's scratch folder or refused with a reason
    members: list[dict[str, Any]] | None = None
    single: bool = False  # a compressed single file (notes.txt.gz): read as the file inside it


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


# (path, language hint from formats.py, settings) -> its text; a module-level function or a picklable object,
# since it is sent to a worker process by reference
Read = Callable[[Path, str | None, Settings], Extraction]
