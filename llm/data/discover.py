"""From what the user typed to the files to read.

expand_paths turns `data.paths` (or the CLI's inputs) into existing paths. discover walks each: every
entry becomes a file to read or a record saying why it is not read. The walk is iterative (any nesting
depth), sorted (the same order every run), follows symbolic links but never into a folder it has already
read (cycles), and never opens fifos, sockets or devices.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llm.errors import ConfigError

DEFAULT_EXCLUDE = tuple(
    """
    .git .hg .svn node_modules .venv venv env __pycache__ .mypy_cache .pytest_cache .ruff_cache .tox .nox .eggs
    build dist *.egg-info .cache outputs multirun wandb lightning_logs .ipynb_checkpoints .DS_Store
    """.split()
)
_GLOB = re.compile(r"[*?[]")
_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike], key: str = "data.paths") -> list[Path]:
    """One path or a list of them -> existing paths, in the order given.

    In each value `~` and `$VAR` / `${VAR}` are expanded, then a glob pattern (`*`, `**`, `?`, `[...]`) becomes
    the paths it matches, sorted. A path that does not exist, or a pattern that matches nothing, raises
    ConfigError naming `key`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths] if os.fspath(paths) else []
    if not paths:
        raise ConfigError(f"{key} is empty: give at least one folder or file, e.g. {key}=$HOME/notes")
    found: list[Path] = []
    for value in paths:
        typed = os.fspath(value) if isinstance(value, os.PathLike) else str(value)  # Hydra reads `2024` as an int
        path = os.path.expanduser(os.path.expandvars(typed))
        if os.path.exists(path):
            found.append(Path(path))
            continue
        matches = sorted(glob.glob(path, recursive=True)) if _GLOB.search(path) else []
        if not matches:
            shown = typed if path == typed else f"{typed} ({path})"
            unset = [v for v in _VARIABLE.findall(path) if v.strip("{}") not in os.environ]
            why = f" (not set: {', '.join('$' + v.strip('{}') for v in unset)})" if unset else ""
            what = "matches nothing" if _GLOB.search(path) else "does not exist"
            raise ConfigError(f"{key}: {shown} {what}{why}")
        found += map(Path, matches)
    return found


@dataclass
class Found:
    path: Path
    rel: str  # for the manifest: relative to the input root, prefixed by its name
    size: int = 0
    status: str | None = None  # None: a regular file to read; else excluded / skipped / error
    reason: str | None = None
    kind: str = "file"


def printable(rel: str) -> str:
    """Names that are not valid UTF-8 keep a readable form (U+FFFD for the undecodable bytes)."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _excluded(name: str, rel: str, patterns: Sequence[str]) -> str | None:
    return next(
        (p for p in patterns if fnmatch.fnmatchcase(name, p) or ("/" in p and fnmatch.fnmatchcase(rel, p))), None
    )


def discover(
    root: Path, prefix: str, exclude: Sequence[str] = DEFAULT_EXCLUDE, own: Sequence[Path] = ()
) -> Iterator[Found]:
    """own: what ingest writes (output folder, text, manifest, cache): excluded where it sits inside root."""
    own_ids = {(s.st_dev, s.st_ino) for s in (_stat(d) for d in own) if s is not None}
    st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        yield from _entry(root, printable(prefix), st, exclude=())
        return
    visited = {(st.st_dev, st.st_ino)}
    stack: list[tuple[Path, str]] = [(root, prefix)]
    while stack:
        folder, rel = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            yield Found(
                folder, printable(rel), status="error", reason=f"cannot list folder: {e.strerror}", kind="folder"
            )
            continue
        subfolders = []
        for e in entries:
            path = Path(e.path)
            erel = f"{rel}/{e.name}"
            shown = printable(erel)
            pattern = _excluded(e.name, erel.split("/", 1)[-1], exclude)
            if pattern:
                kind = "folder" if e.is_dir(follow_symlinks=False) else "file"
                yield Found(path, shown, status="excluded", reason=f"matches exclude pattern '{pattern}'", kind=kind)
                continue
            try:
                est = os.stat(path)  # follows a symbolic link
            except OSError as err:
                why = "broken symbolic link" if e.is_symlink() else "cannot stat"
                yield Found(path, shown, status="error", reason=f"{why}: {err.strerror}")
                continue
            ident = (est.st_dev, est.st_ino)
            if ident in own_ids:
                kind = "folder" if stat.S_ISDIR(est.st_mode) else "file"
                yield Found(path, shown, status="excluded", reason="written by ingest (its output or cache)", kind=kind)
                continue
            if stat.S_ISDIR(est.st_mode):
                if ident in visited:
                    why = "symbolic link to a folder already read (a cycle or a repeat): not followed"
                    yield Found(path, shown, status="skipped", reason=why, kind="folder")
                    continue
                visited.add(ident)
                subfolders.append((path, erel))
            else:
                yield from _entry(path, shown, est, exclude)
        stack.extend(reversed(subfolders))  # depth first, in name order


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _entry(path: Path, shown: str, st: os.stat_result, exclude: Sequence[str]) -> Iterator[Found]:
    if stat.S_ISREG(st.st_mode):
        yield Found(path, shown, size=st.st_size)
    else:
        yield Found(path, shown, status="skipped", reason="not a regular file (fifo, socket or device)")
