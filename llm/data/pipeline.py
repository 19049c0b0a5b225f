"""Find the documents under the input folders and turn each into text, with a manifest line per file.

Every file seen gets exactly one manifest record, whatever happens to it, so nothing is lost silently.
Which reader reads a file comes from the registry of file kinds (formats.py); extraction runs in worker
processes (worker.py) and is cached by content hash + kind, version and settings (cache.py): an unchanged
folder is read again without extracting anything.

An archive is unpacked in a worker too (archive.py); its members come back as files in a scratch folder and are
planned like the files found on disk (`backup.zip!/docs/a.pdf`), in walk order whatever order the workers finish
in, so the manifest is the same with one worker or many.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from llm.atomic import atomic_open
from llm.data import archive, formats, offline, pdf
from llm.data.cache import Cache
from llm.data.discover import DEFAULT_EXCLUDE, discover, printable
from llm.data.document import Document
from llm.data.reader import Settings
from llm.data.worker import Pool, Task, cpu_count

if TYPE_CHECKING:
    from llm.data.ray_pool import RayPool

__all__ = ["Document", "IngestResult", "Record", "format_summary", "ingest", "write_manifest"]

log = logging.getLogger(__name__)
STATUSES = ("ok", "unpacked", "empty", "duplicate", "skipped", "error", "excluded")


@dataclass
class Record:
    path: str  # relative to its input root, prefixed by the root's name
    sha256: str | None
    bytes: int
    kind: str
    status: str  # ok | unpacked | empty | duplicate | skipped | error | excluded
    strategy: str | None = None
    chars: int = 0
    seconds: float = 0.0
    reason: str | None = None
    text_path: str | None = None  # relative to the output directory, ok records only
    language: str | None = None
    pages: int = 0
    cached: bool = False
    container: str | None = None  # what it came out of: zip, tar+gzip, gzip (notes.txt.gz) ...
    rotated: dict[str, int] | None = None  # OCR: page -> degrees turned clockwise to stand upright (when not 0)
    page_starts: dict[str, int] | None = None  # paged formats: page -> where its text starts (not in the manifest)

    def to_json(self) -> dict:
        d = asdict(self)
        del d["page_starts"]
        for key in ("reason", "text_path", "language", "container", "rotated"):
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
    plan = _Plan(settings, cache)
    plan.add(_discover_all(inputs, exclude, own))
    tasks = plan.tasks = deque(
        sorted(plan.tasks, key=lambda t: (_unpacks(t), t.heavy, plan.records[t.index].bytes), reverse=True)
    )  # archives first (their members follow), then the slowest kinds, longest first: no long tail
    if any(t.heavy for t in tasks):
        offline.warn_if_no_spacy_model()
    preload = _preload(tasks, settings)
    result = IngestResult()
    start = time.perf_counter()
    try:
        if tasks:
            pool = _pool(n_workers, len(tasks), settings, preload, grows=any(map(_unpacks, tasks)))
            for task, outcome in pool.run(tasks):  # the plan appends archives' members to `tasks` as they come
                plan.done(task, outcome)
                result.extracted += 1
                log.debug("%s %s %.2fs", plan.records[task.index].status, task.path, outcome["seconds"])
    finally:
        plan.close()
    elapsed = time.perf_counter() - start
    records = result.records
    for i in plan.in_walk_order():
        rec = plan.records[i]
        result.records.append(rec)
        if rec.status == "ok":
            src = cache.text_file(plan.keys[i])
            text_file = _publish(src, out, rec) if out is not None else src
            doc = Document(
                rec.path,
                rec.kind,
                None,
                rec.sha256 or "",
                text_file=text_file,
                language=rec.language,
                text_key=plan.keys[i],
                page_starts={int(p): at for p, at in rec.page_starts.items()} if rec.page_starts else None,
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
    partitioners, warmed up (preload_readers.py); code and text need nothing."""
    heavy = [t for t in tasks if t.heavy]
    if not heavy:
        return ()
    if settings.strategy.get("pdf") == "pdfium" and all(t.read is pdf.read for t in heavy):
        return ("pypdfium2", "unstructured.cleaners.core")
    return ("llm.data.preload_readers",)


def _pool(
    workers: int | None, n_tasks: int, settings: Settings, preload: tuple[str, ...], grows: bool = False
) -> Pool | RayPool:
    """grows: archives among the tasks, whose members join the queue, so no fewer workers than asked for."""
    n_tasks = n_tasks if not grows else 1 << 30
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


def _unpacks(task: Task) -> bool:
    return isinstance(task.read, archive.Unpack)


class _Plan:
    """Every file found and every archive member gets its record here, and a task when the cache cannot answer.

    Records are numbered as they come; `order` keeps walk order ((file,), (file, member), ...). The members of
    archives are planned archive by archive in walk order, whatever order the workers unpack them in, so which
    copy of two equal files is the `duplicate` never depends on timing.
    """

    def __init__(self, settings: Settings, cache: Cache) -> None:
        self.settings = settings
        self.cache = cache
        self.registry = formats.REGISTRY
        self.max_bytes = int(settings.max_file_mb * 2**20)
        self.records: list[Record] = []
        self.order: list[tuple[int, ...]] = []
        self.depth: list[int] = []  # how many archives a record is inside
        self.keys: dict[int, str] = {}  # record index -> cache key
        self.tasks: deque[Task] = deque()  # the pool takes them from the front; members join at the back
        self.seen: dict[str, str] = {}  # sha256 -> first path with that content
        self.names: set[str] = set()
        self.waiting: list[tuple[tuple[int, ...], int]] = []  # archives whose members are not planned yet, in order
        self.listings: dict[int, tuple[dict, bool]] = {}  # record index -> (its members, from the cache)
        self.scratch: Path | None = None  # where workers put the members (archive.scratch_folder)
        self.member_files: dict[int, str] = {}  # record index -> its bytes in the scratch folder, until read

    def add(self, found) -> None:
        for f in found:
            i = self._record(
                Record(f.rel, None, f.size, f.kind if f.status else "unknown", f.status or "ok"), (len(self.order),), 0
            )
            rec = self.records[i]
            start = time.perf_counter()
            if f.status:
                rec.reason = f.reason
                continue
            if f.size > self.max_bytes:
                rec.status = "skipped"
                rec.reason = f"file too large: {f.size} bytes > max_file_mb={self.settings.max_file_mb:g}"
                continue
            try:
                rec.sha256, head, blank = _hash(f.path)
            except OSError as e:
                rec.status = "error"
                rec.reason = f"cannot read: {e.strerror or e}"
                continue
            fmt, language = self.registry.kind_of(f.path, head)
            self._decide(i, fmt, language, blank, str(f.path), f.path.name, f.path.suffix or f.path.name)
            rec.seconds = round(time.perf_counter() - start, 4) if rec.cached else 0.0
        self._release()

    def _record(self, rec: Record, order: tuple[int, ...], depth: int) -> int:
        self.records.append(rec)
        self.order.append(order)
        self.depth.append(depth)
        self.names.add(rec.path)
        return len(self.records) - 1

    def _decide(self, i: int, fmt, language, blank: bool, source: str | None, name: str, shown: str) -> None:
        """The status of a file or member with content: no reader, duplicate, empty, unpacked from the cache or to
        unpack, read from the cache or to read (source: where its bytes are; None once they are gone)."""
        rec = self.records[i]
        rec.language = language
        if fmt is None:
            rec.status = "skipped"
            rec.reason = f"no reader for '{shown}' files"
            return
        rec.kind = fmt.kind
        if rec.sha256 in self.seen:
            rec.status = "duplicate"
            rec.reason = f"same content as {self.seen[rec.sha256]}"
            return
        if blank:
            rec.status = "empty"
            rec.reason = "file is empty" if not rec.bytes else "file has only whitespace"
            return
        self.seen[rec.sha256] = rec.path
        key = self.keys[i] = self.cache.key(rec.sha256, fmt.kind, fmt.version, fmt.settings(self.settings), language)
        if fmt.container:
            if self.depth[i] >= archive.MAX_DEPTH:
                rec.status = "skipped"
                rec.reason = f"archive inside {self.depth[i]} others: deeper than {archive.MAX_DEPTH}, not unpacked"
                return
            bisect.insort(self.waiting, (self.order[i], i))
            listing = self.cache.get(key, self.settings)
            if listing is not None and (listing["status"] != "unpacked" or self._answers(listing, self.depth[i] + 1)):
                self._unpacked(i, listing, cached=True)
                return
            if source is None:
                raise _Gone
            self.scratch = self.scratch or archive.scratch_folder(self.cache.root / "unpacked")
            self.tasks.append(Task(i, source, replace(fmt.read, scratch=str(self.scratch), name=name)))
            return
        hit = self.cache.get(key, self.settings)
        if hit is not None:
            _fill(rec, hit)
            rec.cached = True
        elif source is None:
            raise _Gone
        else:
            self.tasks.append(Task(i, source, fmt.read, language, heavy=fmt.heavy))

    def _answers(self, listing: dict, depth: int) -> bool:
        """Whether the cache answers for every member of an archive's cached listing: their bytes went with the
        scratch folder of the run that unpacked it, so one member to read means unpacking it again."""
        single = listing.get("single")
        for member in listing.get("members", ()):
            if "status" in member or member["blank"]:
                continue
            fmt, language = self._format(member, single)
            if fmt is None:
                continue
            key = self.cache.key(member["sha256"], fmt.kind, fmt.version, fmt.settings(self.settings), language)
            hit = self.cache.get(key, self.settings)
            if hit is None:
                return False
            if fmt.container and depth < archive.MAX_DEPTH and hit["status"] == "unpacked":
                if not self._answers(hit, depth + 1):
                    return False
        return True

    def _format(self, member: dict, single: bool):
        path = Path(member["name"])  # inside a compressed single file, the name archive.inner_name gave it
        head = archive.head_bytes(member)
        return self.registry.kind_of_inner(path, head) if single else self.registry.kind_of(path, head)

    def done(self, task: Task, outcome: dict) -> None:
        """A worker's outcome: a document read, or an archive's members listed (planned when their turn comes)."""
        i = task.index
        if i in self.member_files:
            Path(self.member_files.pop(i)).unlink(missing_ok=True)
        if outcome["status"] == "unpacked":
            listing = {**outcome, "members": [{k: v for k, v in m.items() if k != "file"} for m in outcome["members"]]}
            self.cache.put(self.keys[i], listing, self.settings)
            self._unpacked(i, outcome, cached=False)
            return
        self.cache.put(self.keys[i], outcome, self.settings)
        _fill(self.records[i], outcome)
        if (self.order[i], i) in self.waiting:  # an archive that could not be unpacked: no members to wait for
            self.waiting.remove((self.order[i], i))
            self._release()

    def _unpacked(self, i: int, listing: dict, cached: bool) -> None:
        rec = self.records[i]
        if listing["status"] != "unpacked":  # a cached failure: a corrupt archive stays corrupt
            _fill(rec, listing)
            rec.cached = True
            self.waiting.remove((self.order[i], i))
            return
        rec.status = "unpacked"
        rec.strategy = listing.get("strategy")
        rec.cached = cached
        rec.seconds = round(listing.get("seconds", 0.0), 4) if not cached else 0.0
        n = len(listing["members"])
        rec.reason = f"{rec.strategy} archive: {n} member{'s' * (n != 1)}, each with a record of its own"
        self.listings[i] = (listing, cached)
        self._release()

    def _release(self) -> None:
        """Plan the members of the archives unpacked so far, in walk order: an archive waits for those before it."""
        while self.waiting and self.waiting[0][1] in self.listings:
            _, i = self.waiting.pop(0)
            listing, cached = self.listings.pop(i)
            try:
                self._members(i, listing)
            except _Gone:  # a cached listing whose member's text left the cache meanwhile: unpack it again
                self.records[i].status = "error"
                self.records[i].reason = "its members' text left the cache during the run: run again"

    def _members(self, i: int, listing: dict) -> None:
        parent = self.records[i]
        form = listing.get("strategy")
        if listing.get("single"):  # notes.txt.gz: one record, the file inside read in its place
            [member] = listing["members"]
            parent.container = form
            parent.strategy = parent.reason = None
            if "status" in member:
                parent.status, parent.reason = member["status"], member["reason"]
                return
            sha, parent.sha256 = parent.sha256, member["sha256"]
            parent.kind = "unknown"
            self._take(i, member)
            self._decide(
                i, *self._format(member, True), member["blank"], member.get("file"), member["name"], member["name"]
            )
            parent.sha256 = sha  # the record names the file on disk; its text is the content inside
            self._drop_unless_queued(i)
            return
        for m, member in enumerate(listing["members"]):
            path = f"{parent.path}!/{printable(member['name'])}"
            n = 2
            while path in self.names:  # a zip may hold two members of one name
                path = f"{parent.path}!/{printable(member['name'])}~{n}"
                n += 1
            rec = Record(path, member.get("sha256"), member.get("bytes", 0), "unknown", "ok", container=form)
            j = self._record(rec, (*self.order[i], m), self.depth[i] + 1)
            if "status" in member:
                rec.status, rec.reason = member["status"], member["reason"]
                fmt, _ = self.registry.kind_of(Path(member["name"]))
                rec.kind = fmt.kind if fmt else "unknown"
                continue
            self._take(j, member)
            fmt, language = self._format(member, False)
            name = PurePosixPath(member["name"])
            self._decide(j, fmt, language, member["blank"], member.get("file"), name.name, name.suffix or name.name)
            self._drop_unless_queued(j)

    def _take(self, j: int, member: dict) -> None:
        if member.get("file"):
            self.member_files[j] = member["file"]

    def _drop_unless_queued(self, j: int) -> None:
        """A member answered without a read (cache, duplicate, no reader): its bytes go at once."""
        if j in self.member_files and not (self.tasks and self.tasks[-1].index == j):
            Path(self.member_files.pop(j)).unlink(missing_ok=True)

    def in_walk_order(self) -> list[int]:
        return sorted(range(len(self.records)), key=self.order.__getitem__)

    def close(self) -> None:
        """Remove the scratch folder: members are never left behind, whatever happened to the run."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class _Gone(Exception):
    """A member's bytes are needed but its archive was answered from the cache."""


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
    rec.rotated = outcome.get("rotated")
    rec.page_starts = outcome.get("page_starts")
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
