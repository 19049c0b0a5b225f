"""Compressed files and archives: `.gz`, `.bz2`, `.xz` (one file inside), `.zip`, `.tar` and its compressed forms.

`Unpack` runs in a worker like any reader, under the same time and memory limits. It lists the members and writes
each into a private folder of the run (`scratch`, inside the cache folder) under a name of its own making
(`000012.pdf`): a member's name is never a path on disk, so `../../x` or `/etc/passwd` can only be refused, never
written. The pipeline then reads each member with the reader its own name and content call for, as a document of
its own (`backup.zip!/docs/a.pdf`); a compressed single file is read as the file inside it.

Guards, per member and per archive: what a member expands to (ingest.max_file_mb, as for a file on disk), the
ratio of expanded to compressed bytes past a floor (a zip bomb of zeros is ~1000:1), the bytes and members of the
whole archive. Encrypted members, names with `..` or a leading `/`, and links inside tar files are refused by
name; the rest of the archive is read.
"""

from __future__ import annotations

import base64
import bz2
import functools
import gzip
import hashlib
import lzma
import os
import re
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from llm.data.reader import Extraction, Refused, Settings

MAX_RATIO = 200  # expanded / compressed bytes, checked once a member (or the archive) is past RATIO_FLOOR
RATIO_FLOOR = 8 * 2**20
MAX_ARCHIVE_BYTES = 4 * 2**30  # what one archive may expand to, all its members together
MAX_MEMBERS = 10_000
MAX_DEPTH = 4  # an archive inside an archive inside ...: deeper ones are skipped
HEAD = 1024  # the first bytes of each member, for the registry's magic (formats.py)
CHUNK = 2**20

# content magic -> (name in the manifest, decompressing opener)
STREAMS = {
    b"\x1f\x8b": ("gzip", lambda f: gzip.GzipFile(fileobj=f)),
    b"BZh": ("bzip2", bz2.BZ2File),
    b"\xfd7zXZ\x00": ("xz", lzma.LZMAFile),
}
SUFFIXES = {".gz": "", ".bz2": "", ".xz": "", ".tgz": ".tar", ".tbz": ".tar", ".tbz2": ".tar", ".txz": ".tar"}
_SAFE_SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")


class Bomb(Exception):
    """A member, or the whole archive (`whole`), that expands past the limits."""

    def __init__(self, reason: str, whole: bool = False) -> None:
        super().__init__(reason)
        self.whole = whole


def inner_name(name: str) -> str:
    """The name of the file inside a compressed single file: notes.txt.gz -> notes.txt, site.tgz -> site.tar."""
    path = PurePosixPath(name)
    return path.stem + SUFFIXES.get(path.suffix.lower(), "")


def unsafe(name: str) -> str | None:
    """Why a member's name could escape a folder if it were ever used as a path (it never is), else None."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in parts:
        return "'..' in the path"
    if "\x00" in name:
        return "NUL byte in the name"
    return None


class _Counted:
    """A file object that counts the bytes read from it: the compressed bytes consumed so far."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.n += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()


@dataclass(frozen=True)
class Unpack:
    """The reader of compressed files and archives. The pipeline fills in `scratch` (where members go) and `name`
    (the file's own name, which names the file inside a compressed single file)."""

    scratch: str = ""
    name: str = ""

    def __call__(self, path: Path, language: str | None, settings: Settings) -> Extraction:
        if not self.scratch:
            raise Refused("error", "archives are unpacked by the pipeline, which gives them a scratch folder")
        folder = Path(tempfile.mkdtemp(dir=self.scratch))  # this archive's own: members are numbered in it
        return _Unpacker(folder, int(settings.max_file_mb * 2**20)).unpack(path, self.name or path.name)


class _Unpacker:
    """One archive: its members listed in order, each copied into the scratch folder or refused with a reason."""

    def __init__(self, scratch: Path, max_member: int) -> None:
        self.scratch = scratch
        self.max_member = max_member
        self.members: list[dict[str, Any]] = []
        self.expanded = 0  # bytes, all members together

    def unpack(self, path: Path, name: str) -> Extraction:
        with path.open("rb") as f:
            head = f.read(512)
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            self._zip(path)
            return Extraction("", "zip", members=self.members)
        for magic, (form, opener) in STREAMS.items():
            if head.startswith(magic):
                return self._stream(path, name, form, opener)
        if _is_tar(head):
            with path.open("rb") as raw:
                counted = _Counted(raw)
                self._tar(counted, counted)
            return Extraction("", "tar", members=self.members)
        shown = head[:16].decode("latin-1").encode("unicode_escape").decode()
        raise Refused("error", f"not an archive or compressed file: it starts with {shown!r}")

    def _stream(self, path: Path, name: str, form: str, opener) -> Extraction:
        """A compressed stream: a tar inside (site.tar.gz), or one file (notes.txt.gz, changelog.gz)."""
        with path.open("rb") as raw:
            counted = _Counted(raw)
            stream = opener(counted)
            try:
                first = stream.peek(512)[:512]
                if _is_tar(first):
                    self._tar(stream, counted)
                    return Extraction("", f"tar+{form}", members=self.members)
                self._copy(inner_name(name), stream.read, lambda: counted.n)
            except Bomb as e:
                raise Refused("error", f"decompression bomb refused: {e}") from e
            except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
                raise Refused("error", f"corrupt {form} data: {type(e).__name__}: {e}") from e
        return Extraction("", form, members=self.members, single=True)

    def _zip(self, path: Path) -> None:
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise Refused("error", f"corrupt zip archive: {e}") from e
        with archive:
            for info in archive.infolist():
                name = info.filename
                if info.is_dir() or not self._may_read(name):
                    continue
                if info.flag_bits & 0x1:
                    self._refuse(name, "error", "encrypted member: it needs a password")
                    continue
                try:
                    _check(info.file_size, info.compress_size, MAX_ARCHIVE_BYTES, whole=False)  # as it declares
                except Bomb as e:
                    self._refuse(name, "error", f"decompression bomb refused: {e} (its declared size)")
                    continue
                if info.file_size > self.max_member:
                    self._too_large(name, info.file_size)
                    continue
                try:
                    with archive.open(info) as f:
                        self._copy(name, f.read, functools.partial(_consumed, f, info.compress_size))
                except Bomb as e:
                    self._refuse(name, "error", f"decompression bomb refused: {e}")
                    if e.whole:
                        return
                except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as e:
                    self._refuse(name, "error", f"corrupt member: {type(e).__name__}: {e}")

    def _tar(self, stream: IO[bytes], counted: _Counted) -> None:
        """A tar read as a stream (mode r|), in one pass, whatever compresses it. A bomb or damage in the stream
        ends the archive there: the members before it stay."""
        name = "(the rest of the archive)"
        try:
            archive = tarfile.open(fileobj=stream, mode="r|")
            for info in archive:
                name = info.name
                if info.isdir() or not self._may_read(name):
                    continue
                if info.issym() or info.islnk():
                    self._refuse(name, "skipped", f"link inside the archive (to {info.linkname!r}): not followed")
                elif not info.isfile():
                    self._refuse(name, "skipped", "not a regular file (fifo or device) inside the archive")
                elif info.size > self.max_member:
                    self._too_large(name, info.size)
                else:
                    self._copy(name, archive.extractfile(info).read, lambda: counted.n)
                name = "(the rest of the archive)"
        except Bomb as e:
            self._refuse(name, "error", f"decompression bomb refused: {e}; the rest of the archive is not read")
        except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as e:
            if not self.members:
                raise Refused("error", f"corrupt tar archive: {type(e).__name__}: {e}") from e
            self._refuse(name, "error", f"corrupt archive from here: {type(e).__name__}: {e}; the rest is not read")

    def _may_read(self, name: str) -> bool:
        """False for names that are refused (recorded) or past MAX_MEMBERS (one record for all of them)."""
        if len(self.members) > MAX_MEMBERS:
            return False
        if len(self.members) == MAX_MEMBERS:
            self._refuse(name, "skipped", f"more than {MAX_MEMBERS} members: this one and the rest are not read")
            return False
        why = unsafe(name)
        if why:
            self._refuse(name, "error", f"unsafe member name ({why}): not read")
        return why is None

    def _refuse(self, name: str, status: str, reason: str) -> None:
        self.members.append({"name": name, "status": status, "reason": reason})

    def _too_large(self, name: str, size: int) -> None:
        self._refuse(name, "skipped", f"member too large: {size} bytes > max_file_mb={self.max_member / 2**20:g}")

    def _copy(self, name: str, read: Callable[[int], bytes], compressed: Callable[[], int]) -> None:
        """Copy one member into the scratch folder under a made-up name, hashing it, within the limits."""
        suffix = PurePosixPath(name).suffix.lower()
        target = self.scratch / f"{len(self.members):06d}{suffix if _SAFE_SUFFIX.fullmatch(suffix) else ''}"
        h, size, head, blank = hashlib.sha256(), 0, b"", True
        start = compressed()
        try:
            with open(target, "xb") as out:
                while chunk := read(CHUNK):
                    size += len(chunk)
                    self.expanded += len(chunk)
                    _check(size, compressed() - start, self.max_member, whole=False)
                    _check(self.expanded, compressed(), MAX_ARCHIVE_BYTES, whole=True)
                    h.update(chunk)
                    head = head or chunk[:HEAD]
                    blank = blank and not chunk.strip()
                    out.write(chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        self.members.append(
            {
                "name": name,
                "file": str(target),
                "sha256": h.hexdigest(),
                "bytes": size,
                "head": base64.b64encode(head).decode(),
                "blank": blank,
            }
        )


def _consumed(member: zipfile.ZipExtFile, compressed_size: int) -> int:
    """The compressed bytes of a zip member read so far (CPython's counter; all of them where it is missing)."""
    return compressed_size - getattr(member, "_compress_left", 0)


def _check(expanded: int, compressed: int, limit: int, whole: bool) -> None:
    what = "the archive" if whole else "it"
    if expanded > limit:
        raise Bomb(f"{what} expands to more than {limit} bytes", whole)
    if expanded > RATIO_FLOOR and expanded > MAX_RATIO * max(compressed, 1):
        raise Bomb(f"{what} expands more than {MAX_RATIO}:1 ({expanded} bytes from {compressed})", whole)


def _is_tar(block: bytes) -> bool:
    """A tar header: its checksum holds (old v7 tars have no `ustar` magic, only that)."""
    if len(block) < 512 or block[:1] == b"\x00":
        return False
    try:
        tarfile.TarInfo.frombuf(block[:512], "utf-8", "surrogateescape")
    except tarfile.TarError:
        return False
    return True


def head_bytes(member: dict[str, Any]) -> bytes:
    """The first bytes of a listed member, for the registry's magic."""
    return base64.b64decode(member.get("head", ""))


def scratch_folder(parent: Path) -> Path:
    """A private folder for this run's members (mode 0700), named after this process; folders of runs that died
    (their process is gone) are removed first."""
    import shutil

    parent.mkdir(parents=True, exist_ok=True)
    for entry in parent.iterdir():
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))


def _alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill would end it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def settings_used(settings: Settings) -> list:
    """The settings an archive's listing depends on (part of its cache key)."""
    return [settings.max_file_mb]
