"""Files that appear whole or not at all, on any filesystem: what a later run reads is never half-written.

A file is written under a temporary name in its own folder (`.<name>.<random>.partial`), flushed and fsynced,
then renamed over the target with os.replace, and the folder is fsynced so the rename survives a power cut.
The rename never crosses filesystems, unlike a temporary file made in TMPDIR and moved into place (a move
between filesystems copies into the target in place: a kill during it leaves the target truncated).
A killed write leaves only its temporary file, which remove_stale_temps deletes at the next start.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".partial"


def temp_path(path: Path) -> Path:
    """The temporary name a write of `path` uses: hidden, beside it, unique per write."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """open(path, mode) for writing, but `path` changes only when the block ends without an exception.

    mode: "wb" or "w" (kwargs: encoding, errors, newline). The file gets the permissions open() would give.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode={mode!r} must be 'wb' or 'w'")
    path = Path(path)
    tmp = temp_path(path)
    f = open(tmp, mode.replace("w", "x"), **kwargs)  # noqa: SIM115 (x: a new file, never another writer's)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | Path, text: str, encoding: str = "utf-8", errors: str = "strict") -> None:
    with atomic_open(path, "w", encoding=encoding, errors=errors, newline="") as f:
        f.write(text)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` durable. A no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder: the rename is still atomic
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | Path, older_than_s: float = 0.0) -> list[Path]:
    """Delete the temporary files killed writes left in `folder` (not below it); returns them.

    older_than_s: spare younger ones, where another process may be writing into the same folder now.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for p in folder.iterdir():
        if not is_temp(p):
            continue
        try:
            if older_than_s and now - p.stat().st_mtime < older_than_s:
                continue
            p.unlink()
        except FileNotFoundError:  # its writer finished or another run removed it
            continue
        removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) left by a killed write in %s", len(removed), folder)
    return removed
