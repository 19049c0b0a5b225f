"""Find the documents under the input folders and turn each into text, with a manifest line per file.

Every file seen gets exactly one manifest record, whatever happens to it, so nothing is lost silently.
Which reader reads a file comes from the registry of file kinds (kinds.py); extraction runs in worker
processes (worker.py) and is cached by content hash + kind, version and settings (cache.py): an unchanged
folder is read again without extracting anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llm.atomic import atomic_open
from llm.data import kinds, offline, pdf
from llm.data.cache import Cache
from llm.data.discover import DEFAULT_EXCLUDE, Found, discover
from llm.data.reader import Settings
from llm.data.worker import Pool, Task, cpu_count

if TYPE_CHECKING:
    from llm.data.ray_pool import RayPool

__all__ = ["Document", "IngestResult", "Record", "format_summary", "ingest", "write_manifest"]

log = logging.getLogger(__name__)
STATUSES = ("ok", "empty", "duplicate", "skipped", "error", "excluded")


class Document:
    """One extracted text. `text` is read from its file on use, so a corpus never sits in memory whole."""

    def __init__(
        self,
        path: str,
        kind: str,
        text: str | None = None,
        sha256: str = "",
        *,
        text_file: Path | None = None,
        language: str | None = None,
        text_key: str = "",
    ) -> None:
        self.path = path
        self.kind = kind
        self.sha256 = sha256
        self.language = language
        self._text = text
        self.text_file = text_file
        # names this exact text: the source's hash with its reader's version and settings (the cache key)
        self.text_key = text_key or sha256

    @property
    def text(self) -> str:
        if self._text is not None:
            return self._text
        with open(self.text_file, encoding="utf-8", newline="") as f:  # as extracted: \r\n stays \r\n
            return f.read()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Document):
            return NotImplemented
        return (self.path, self.kind, self.sha256, self.text) == (other.path, other.kind, other.sha256, other.text)

    __hash__ = None  # mutable: compared by value, never hashed

    def __repr__(self) -> str:
        return f"Document({self.path!r}, {self.kind!r}, sha256={self.sha256[:12]!r})"


@dataclass
class Record:
    path: str  # relative to its input root, prefixed by the root's name
    sha256: str | None
    bytes: int
    kind: str
    status: str  # ok | empty | duplicate | skipped | error | excluded
    strategy: str | None = None
    chars: int = 0
    seconds: float = 0.0
    reason: str | None = None
    text_path: str | None = None  # relative to the output directory, ok records only
    language: str | None = None
    pages: int = 0
    cached: bool = False

    def to_json(self) -> dict:
        d = asdict(self)
        for key in ("reason", "text_path", "language"):
            if d[key] is None:
                del d[key]
        return d


@dataclass
class IngestResult:
    documents: list[Document] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    extracted: int = 0  # files sent to a reader this run (the rest came from the cache)

    def counts(self) -> Counter:
        return Counter(r.status for r in self.records)


def ingest(
    inputs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    *,
    settings: Settings | Mapping | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> IngestResult:
    """Read every file under inputs (existing paths: discover.expand_paths makes them from what a user typed).
    With out_dir: write out_dir/text/… and out_dir/manifest.jsonl.

    The cache lives in cache_dir (default out_dir/cache). workers overrides settings.workers. settings.backend
    picks where files are read: worker processes here (local) or Ray actors (ray, llm/data/ray_pool.py).
    """
    settings = settings if isinstance(settings, Settings) else Settings.from_mapping(settings)
    n_workers = workers or settings.workers
    offline.set_environment()
    out = Path(out_dir) if out_dir is not None else None
    if cache_dir:
        cache = Cache(Path(cache_dir))
    elif out is not None:
        cache = Cache(out / "cache")
    else:
        cache = Cache(Path(".cache/llm/ingest"))

    own = [cache.root, *([out, out / "text", out / "manifest.jsonl"] if out else [])]  # never read back as input
    found = list(_discover_all(inputs, exclude, own))
    records, tasks, keys = _plan(found, settings, cache)
    result = IngestResult(records=records)
    tasks.sort(key=lambda t: (t.heavy, records[t.index].bytes), reverse=True)  # longest first: no long tail
    if any(t.heavy for t in tasks):
        offline.warn_if_no_spacy_model()
    preload = _preload(tasks, settings)
    start = time.perf_counter()
    for task, outcome in _pool(n_workers, len(tasks), settings, preload).run(tasks) if tasks else ():
        rec = records[task.index]
        cache.put(keys[task.index], outcome, settings)
        _fill(rec, outcome)
        result.extracted += 1
        log.debug("%s %s %.2fs", rec.status, rec.path, rec.seconds)
    elapsed = time.perf_counter() - start
    for i, rec in enumerate(records):
        if rec.status == "ok":
            src = cache.text_file(keys[i])
            text_file = _publish(src, out, rec) if out is not None else src
            doc = Document(
                rec.path, rec.kind, None, rec.sha256 or "", text_file=text_file, language=rec.language, text_key=keys[i]
            )
            result.documents.append(doc)
    if out is not None:
        _prune(out, _text_paths(out / "manifest.jsonl") - {r.text_path for r in records if r.text_path})
        write_manifest(records, out / "manifest.jsonl")
    log.info("%s", format_summary(result, elapsed))
    counts = result.counts()
    problems = {s: counts[s] for s in ("error", "skipped", "empty") if counts[s]}
    if problems:
        where = out / "manifest.jsonl" if out is not None else "the manifest"
        summary = ", ".join(f"{k} {v}" for k, v in problems.items())
        log.warning(
            "%d of %d files not ingested (%s): reasons in %s", sum(problems.values()), len(records), summary, where
        )
    return result


def _preload(tasks: Sequence[Task], settings: Settings) -> tuple[str, ...]:
    """What the workers import once, before their first file: PDFs read by PDFium need PDFium and unstructured's
    cleaners (a scanned page imports the OCR stack in its worker, once); anything else heavy needs unstructured's
    partitioners, warmed up (warm.py); code and text need nothing."""
    heavy = [t for t in tasks if t.heavy]
    if not heavy:
        return ()
    if settings.strategy.get("pdf") == "pdfium" and all(t.read is pdf.read for t in heavy):
        return ("pypdfium2", "unstructured.cleaners.core")
    return ("llm.data.warm",)


def _pool(workers: int | None, n_tasks: int, settings: Settings, preload: tuple[str, ...]) -> Pool | RayPool:
    if settings.backend == "ray":
        from llm.data.ray_pool import RayPool

        return RayPool(workers and min(workers, n_tasks), settings, preload)
    return Pool(min(workers or cpu_count(), n_tasks), settings, preload)


def _discover_all(inputs: Sequence[str | Path], exclude: Sequence[str], own: Sequence[Path] = ()):
    prefixes: set[str] = set()
    names: set[str] = set()
    for root in map(Path, inputs):
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        prefix = root.resolve().name or "root"
        n = 1
        while prefix in prefixes:  # two inputs with the same folder name stay apart
            n += 1
            prefix = f"{root.resolve().name}~{n}"
        prefixes.add(prefix)
        for f in discover(root, prefix, exclude, own):
            if f.rel in names:  # names that were not UTF-8 print alike (caf\xe9, caf\xe8 -> caf�): keep them apart
                n = 2
                while f"{f.rel}~{n}" in names:
                    n += 1
                f.rel = f"{f.rel}~{n}"
            names.add(f.rel)
            yield f


def _plan(found: list[Found], settings: Settings, cache: Cache) -> tuple[list[Record], list[Task], dict[int, str]]:
    """Hash and classify every file; answer what the cache knows; return the rest as tasks."""
    records: list[Record] = []
    tasks: list[Task] = []
    keys: dict[int, str] = {}
    seen: dict[str, str] = {}  # sha256 -> first path with that content
    registry = kinds.REGISTRY
    max_bytes = int(settings.max_file_mb * 2**20)
    for f in found:
        i = len(records)
        start = time.perf_counter()
        if f.status:
            records.append(Record(f.rel, None, f.size, f.kind, f.status, reason=f.reason))
            continue
        rec = Record(f.rel, None, f.size, "unknown", "ok")
        records.append(rec)
        if f.size > max_bytes:
            rec.status = "skipped"
            rec.reason = f"file too large: {f.size} bytes > max_file_mb={settings.max_file_mb:g}"
            continue
        try:
            sha, head, blank = _hash(f.path)
        except OSError as e:
            rec.status = "error"
            rec.reason = f"cannot read: {e.strerror or e}"
            continue
        rec.sha256 = sha
        fmt, rec.language = registry.kind_of(f.path, head)
        if fmt is None:
            rec.status = "skipped"
            rec.reason = f"no reader for '{f.path.suffix or f.path.name}' files"
            continue
        rec.kind = fmt.kind
        if sha in seen:
            rec.status = "duplicate"
            rec.reason = f"same content as {seen[sha]}"
        elif blank:
            rec.status = "empty"
            rec.reason = "file is empty" if f.size == 0 else "file has only whitespace"
        else:
            seen[sha] = rec.path
            keys[i] = cache.key(sha, fmt.kind, fmt.version, fmt.settings(settings), rec.language)
            hit = cache.get(keys[i], settings)
            if hit is None:
                tasks.append(Task(i, str(f.path), fmt.read, rec.language, heavy=fmt.heavy))
            else:
                _fill(rec, hit)
                rec.cached = True
                rec.seconds = round(time.perf_counter() - start, 4)
    return records, tasks, keys


def _hash(path: Path) -> tuple[str, bytes, bool]:
    """(sha256, first bytes, whether the file holds only whitespace) in one pass."""
    h = hashlib.sha256()
    head = b""
    blank = True
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            head = head or chunk[:4096]
            blank = blank and not chunk.strip()
    return h.hexdigest(), head, blank


def _fill(rec: Record, outcome: Mapping) -> None:
    rec.status = outcome["status"]
    rec.reason = outcome.get("reason")
    rec.strategy = outcome.get("strategy")
    rec.pages = outcome.get("pages", 0)
    rec.language = outcome.get("language") or rec.language
    rec.chars = outcome.get("chars", len(outcome.get("text") or ""))
    rec.seconds = round(outcome.get("seconds", 0.0), 4)


def _publish(src: Path, out: Path, rec: Record) -> Path:
    """Put the text where the manifest says (out/text/<path>.txt): a hard link to the cache when possible."""
    rel = _text_rel(rec.path)
    try:
        dst = _place(src, out / rel)
    except OSError:  # a file named like a folder: `Makefile` -> text/Makefile.txt, beside a folder `Makefile.txt/`
        rel = _hashed_rel(rec.path)
        dst = _place(src, out / rel)
    rec.text_path = rel
    return dst


def _place(src: Path, dst: Path) -> Path:
    if dst.is_file() and os.path.samefile(src, dst):
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def _text_rel(path: str) -> str:
    rel = f"text/{path}.txt"
    if len(rel.encode()) > 1024 or any(len(p.encode()) > 240 for p in rel.split("/")):
        rel = _hashed_rel(path)  # deep or long names
    return rel


def _hashed_rel(path: str) -> str:
    return f"text/_long/{hashlib.sha256(path.encode()).hexdigest()[:24]}.txt"


def _text_paths(manifest: Path) -> set[str]:
    """The text files an earlier run wrote, as its manifest lists them (none when there is no manifest)."""
    if not manifest.is_file():
        return set()
    paths = set()
    for line in manifest.read_text(encoding="utf-8").splitlines():
        try:
            rel = json.loads(line).get("text_path")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(rel, str) and rel.startswith("text/") and ".." not in rel.split("/"):
            paths.add(rel)
    return paths


def _prune(out: Path, stale: set[str]) -> None:
    """Drop the text files of sources that are gone. Only files an earlier run wrote are ever removed."""
    for rel in stale:
        p = out / rel
        p.unlink(missing_ok=True)
        for parent in p.parents:  # folders this left empty, up to out/text
            if parent == out / "text" or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


def write_manifest(records: Sequence[Record], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")


def format_summary(result: IngestResult, seconds: float | None = None, slowest: int = 5, problems: int = 20) -> str:
    """Counts by status and by kind, the slowest files, and each file that did not become text."""
    recs = result.records
    counts = result.counts()
    cached = sum(r.cached for r in recs)
    head = f"{len(recs)} entries: " + ", ".join(f"{s} {counts[s]}" for s in STATUSES if counts[s])
    head += f"  (extracted {result.extracted}, from cache {cached}"
    head += f", {seconds:.1f} s)" if seconds is not None else ")"
    kinds = sorted({r.kind for r in recs})
    cols = [s for s in STATUSES if counts[s]]
    lines = [head, f"  {'kind':<8}" + "".join(f"{s:>10}" for s in cols)]
    for k in kinds:
        c = Counter(r.status for r in recs if r.kind == k)
        lines.append(f"  {k:<8}" + "".join(f"{c[s]:>10}" for s in cols))
    slow = sorted((r for r in recs if r.seconds > 0 and not r.cached), key=lambda r: -r.seconds)[:slowest]
    if slow:
        lines.append("slowest:")
        lines += [f"  {r.seconds:7.2f} s  {r.path}  ({r.kind}, {r.strategy or r.status})" for r in slow]
    bad = [r for r in recs if r.status in ("error", "skipped", "empty")]
    if bad:
        lines.append(f"not ingested ({len(bad)}):")
        lines += [f"  {r.status:<8} {r.path}: {r.reason}" for r in bad[:problems]]
        if len(bad) > problems:
            lines.append(f"  … and {len(bad) - problems} more in manifest.jsonl")
    return "\n".join(lines)
