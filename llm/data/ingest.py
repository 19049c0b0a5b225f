"""Find the documents under the input folders and turn each into text, with a manifest line per file.

Every file seen gets exactly one manifest record, whatever happens to it, so nothing is lost silently.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llm.data.kinds import kind_of
from llm.data.text import read_text

log = logging.getLogger(__name__)

DEFAULT_EXCLUDE = (
    ".git", ".hg", ".svn", "node_modules", ".venv", "venv", "env", "__pycache__", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".tox", "build", "dist", "*.egg-info", ".cache", "outputs", "multirun",
    "wandb", "lightning_logs",
)  # fmt: skip


@dataclass
class Document:
    path: str  # relative to its input root, prefixed by the root's name
    kind: str
    text: str
    sha256: str


@dataclass
class Record:
    path: str
    sha256: str | None
    bytes: int
    kind: str
    status: str  # ok | empty | duplicate | skipped | error | excluded
    chars: int = 0
    seconds: float = 0.0
    reason: str | None = None
    language: str | None = None


@dataclass
class IngestResult:
    documents: list[Document] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter(r.status for r in self.records)


def discover(root: Path, exclude: Sequence[str]) -> Iterator[tuple[Path, str | None]]:
    """Yield (file, None) for files to read and (path, reason) for excluded ones; links are not followed."""
    if root.is_file():
        yield root, None
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames):
            if any(fnmatch.fnmatch(name, pat) for pat in exclude):
                dirnames.remove(name)
                yield Path(dirpath) / name, "excluded folder"
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if any(fnmatch.fnmatch(name, pat) for pat in exclude):
                yield path, "excluded by pattern"
            elif path.is_symlink():
                yield path, "symbolic link not followed"
            else:
                yield path, None


def ingest(inputs: Sequence[str | Path], out_dir: str | Path | None = None, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> IngestResult:
    """Read every file under inputs; write out_dir/manifest.jsonl when out_dir is given."""
    result = IngestResult()
    seen: dict[str, str] = {}  # sha256 -> first path with that content
    for root in map(Path, inputs):
        if not root.exists():
            raise FileNotFoundError(f"data.paths: {root} does not exist")
        root = root.resolve()
        base = root.parent
        for path, excluded in discover(root, exclude):
            rel = path.relative_to(base).as_posix()
            if excluded:
                result.records.append(Record(rel, None, 0, "-", "excluded", reason=excluded))
                continue
            result.records.append(_ingest_file(path, rel, seen, result.documents))
    if out_dir is not None:
        write_manifest(result.records, Path(out_dir) / "manifest.jsonl")
    c = result.counts()
    log.info("ingested %d files: %s", len(result.records), ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    return result


def _ingest_file(path: Path, rel: str, seen: dict[str, str], docs: list[Document]) -> Record:
    start = time.perf_counter()
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    kind, language = kind_of(path)
    rec = Record(rel, sha, len(data), kind, "ok", language=language)
    if kind == "unknown":
        rec.status, rec.reason = "skipped", f"no ingester for '{path.suffix or path.name}' files"
    elif sha in seen:
        rec.status, rec.reason = "duplicate", f"same content as {seen[sha]}"
    elif not data.strip():
        rec.status, rec.reason = "empty", "file has no text"
    else:
        text, problem = read_text(data)
        if problem:
            rec.status, rec.reason = "skipped", problem
        else:
            seen[sha] = rel
            rec.chars = len(text)
            docs.append(Document(rel, kind, text, sha))
    rec.seconds = round(time.perf_counter() - start, 4)
    return rec


def write_manifest(records: Sequence[Record], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
