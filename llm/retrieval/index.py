"""The full-text index of a corpus's passages: SQLite's FTS5 (in Python's standard library), ranked by BM25.

One file, `index.sqlite`: a table of documents (path, the key of the text it was indexed from, kind), a table of
passages (path, page, kind, text) and an FTS5 table over the passages' text, kept in step with it by triggers.
`update` is incremental: a document whose text key (its content hash with its reader's version and settings, the
ingestion cache's key) is unchanged keeps its passages, rows and ids; a changed one gets new passages; one no
longer in the corpus leaves the index.

A question is searched as plain words: every run of letters and digits, quoted (so `AND`, `NEAR`, `*`, quotes and
brackets are words or nothing, never syntax), common English words left out, joined with OR, so a passage that
holds some of the words still ranks. Nothing left, or nothing found: no hits.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llm.errors import ConfigError
from llm.retrieval.passages import split_passages

if TYPE_CHECKING:  # the server searches an index without loading the ingestion stack
    from llm.data.document import Document

FILE = "index.sqlite"
VERSION = "1"  # the schema and the passage rules: an index of another version is rebuilt
SCHEMA = [  # one statement each: they run inside one transaction (executescript would commit before them)
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS documents (path TEXT PRIMARY KEY, text_key TEXT NOT NULL, kind TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS passages (
        id INTEGER PRIMARY KEY, path TEXT NOT NULL, page INTEGER, kind TEXT NOT NULL, text TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS passages_by_path ON passages (path)",
    """CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING fts5 (
        text, content='passages', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
    )""",
    """CREATE TRIGGER IF NOT EXISTS passages_added AFTER INSERT ON passages BEGIN
        INSERT INTO passages_fts (rowid, text) VALUES (new.id, new.text);
    END""",
    """CREATE TRIGGER IF NOT EXISTS passages_removed AFTER DELETE ON passages BEGIN
        INSERT INTO passages_fts (passages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END""",
]
DROP = ["DROP TABLE IF EXISTS passages_fts", "DROP TABLE IF EXISTS passages", "DROP TABLE IF EXISTS documents"]
# Words that say nothing about which passage answers (a question's "what is the ... of ..."): left out of queries
STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be been being below between both but by can could did
    do does doing down during each few for from further had has have having he her here hers him his how i if in
    into is it its itself just me more most my no nor not of off on once only or other our ours out over own same
    she should so some such than that the their theirs them then there these they this those through to too under
    until up very was we were what when where which while who whom why will with would you your yours tell say
    please know""".split()
)
_WORDS = re.compile(r"\w+")


@dataclass(frozen=True)
class Hit:
    """A passage found for a question: where it is (path, an archive's member as `notes.zip!/a/b.pdf`; page for paged
    formats; kind) and its BM25 score (higher is better)."""

    path: str
    page: int | None
    kind: str
    score: float
    text: str

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "page": self.page,
            "kind": self.kind,
            "score": round(self.score, 4),
            "text": self.text,
        }


def fts_query(question: str) -> str | None:
    """The FTS5 query of a question: its words, each quoted, common words left out, joined by OR; None: no word."""
    words = dict.fromkeys(w for w in _WORDS.findall(question.lower()) if w not in STOPWORDS and w != "_")
    return " OR ".join(f'"{w}"' for w in words) or None


class Index:
    """An index file, opened (and made when `create`) at path."""

    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()  # one connection, asked from the server's worker threads one at a time
        if not create and not self.path.is_file():
            raise ConfigError(f"retrieval.index: no index at {self.path} (build one with python -m llm.index)")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # autocommit: transactions are begun explicitly (_writing), so a writer holds the lock from its start
            self.db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            if create:
                self._create()
            version = self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"retrieval.index: {self.path} is not a readable index ({e})") from None
        if version is None or version[0] != VERSION:
            raise ConfigError(f"retrieval.index: {self.path} is an index of another version: build it again")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction, begun IMMEDIATE: two processes indexing one corpus at once (the nodes of a job on
        one machine) take turns, neither sees the other's half-made schema or passages."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _create(self) -> None:
        """The tables, made once; an index of another version is emptied and made again."""
        with self._writing():
            has_meta = self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
            version = self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() if has_meta else None
            if version is not None and version[0] != VERSION:
                for statement in DROP:
                    self.db.execute(statement)
            for statement in SCHEMA:
                self.db.execute(statement)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (VERSION,))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, documents: Iterable[Document]) -> dict[str, int]:
        """Make the index hold exactly `documents`: new and changed ones (re)indexed, gone ones removed. Returns the
        counts: added, changed, removed, unchanged documents, and passages in the index."""
        counts = dict.fromkeys(("added", "changed", "removed", "unchanged"), 0)
        seen = set()
        with self._writing():
            known = dict(self.db.execute("SELECT path, text_key FROM documents"))
            for doc in documents:
                seen.add(doc.path)
                before = known.get(doc.path)
                if before == doc.text_key:
                    counts["unchanged"] += 1
                    continue
                counts["added" if before is None else "changed"] += 1
                self.db.execute("DELETE FROM passages WHERE path = ?", (doc.path,))
                rows = [(doc.path, p.page, doc.kind, p.text) for p in split_passages(doc.text, doc.page_starts)]
                self.db.executemany("INSERT INTO passages (path, page, kind, text) VALUES (?, ?, ?, ?)", rows)
                self.db.execute("INSERT OR REPLACE INTO documents VALUES (?, ?, ?)", (doc.path, doc.text_key, doc.kind))
            for path in set(known) - seen:
                counts["removed"] += 1
                self.db.execute("DELETE FROM passages WHERE path = ?", (path,))
                self.db.execute("DELETE FROM documents WHERE path = ?", (path,))
        counts["passages"] = self.db.execute("SELECT count(*) FROM passages").fetchone()[0]
        return counts

    def search(self, question: str, k: int) -> list[Hit]:
        """The k passages that answer question best, best first; [] when none holds any of its words."""
        query = fts_query(question)
        if query is None or k < 1:
            return []
        with self.lock:
            rows = self.db.execute(
                "SELECT p.path, p.page, p.kind, bm25(passages_fts) AS rank, p.text FROM passages_fts "
                "JOIN passages p ON p.id = passages_fts.rowid WHERE passages_fts MATCH ? ORDER BY rank LIMIT ?",
                (query, min(k, 10_000)),  # no prompt holds more
            ).fetchall()
        return [Hit(path, page, kind, -rank, text) for path, page, kind, rank, text in rows]

    def copy_to(self, path: str | Path) -> Path:
        """A consistent copy of the whole index at path (SQLite's backup, safe while others read it), put in place
        by a rename: two processes copying to one path at once each write a file of their own, the last one stays."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            target = sqlite3.connect(tmp)
            try:
                self.db.backup(target)
            finally:
                target.close()
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path
