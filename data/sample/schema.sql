-- Documents and the runs that trained on them.
CREATE TABLE documents (
    id        INTEGER PRIMARY KEY,
    path      TEXT NOT NULL UNIQUE,
    sha256    TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('text', 'code', 'pdf', 'image')),
    chars     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE runs (
    id         INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    preset     TEXT NOT NULL,
    val_loss   REAL
);

SELECT kind, COUNT(*) AS files, SUM(chars) AS chars
FROM documents
GROUP BY kind
ORDER BY chars DESC;
