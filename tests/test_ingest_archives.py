"""Compressed files and archives: every member a document of its own, read by its own reader; bombs, escaping
names, encrypted members, links and corrupt archives each an `error` (or `skipped`) record that stops nothing."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from pathlib import Path

import pytest

from llm.data.pipeline import ingest
from tests.ingest_fixtures import docx_bytes, tar_bytes, text_pdf, write, zeros_zip, zip_bytes


def three(tag: str) -> dict[str, bytes]:
    """A text file, a PDF and a .docx, each with words of its own."""
    return {
        "docs/notes.txt": f"{tag} plain text words\n".encode(),
        "docs/manual.pdf": text_pdf([[f"{tag} manual page words"]]),
        "memo.docx": docx_bytes([f"{tag} memo paragraph words"]),
    }


WORDS = {"notes.txt": "plain text words", "manual.pdf": "manual page words", "memo.docx": "memo paragraph words"}
COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


def containers(root: Path) -> dict[str, tuple[str, str]]:
    """One folder with every container form, each holding the three; manifest path -> (form, words of its text)."""
    expected = {}
    for suffix, compress in COMPRESS.items():  # a compressed single file is read as the file inside it
        for name, data in three(suffix).items():
            name = Path(name).name
            write(root / suffix / f"{name}.{suffix}", compress(data))
            expected[f"c/{suffix}/{name}.{suffix}"] = (suffix, f"{suffix} {WORDS[name]}")
    for form, archive, data, inside in (
        ("zip", "backup.zip", zip_bytes(three("zip")), ""),
        ("tar", "site.tar", tar_bytes(three("tar")), ""),
        ("tar.gz", "site.tar.gz", tar_bytes(three("tar.gz"), "w:gz"), ""),
        ("nested", "outer.zip", zip_bytes({"in/inner.zip": zip_bytes(three("nested"))}), "in/inner.zip!/"),
    ):
        write(root / archive, data)
        for name in three(form):
            expected[f"c/{archive}!/{inside}{name}"] = (form, f"{form} {WORDS[Path(name).name]}")
    return expected


def test_every_member_of_every_container_form_is_a_document(tmp_path):
    expected = containers(tmp_path / "c")
    out = tmp_path / "out"
    result = ingest([tmp_path / "c"], out, workers=2)
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    recs = {r["path"]: r for r in map(json.loads, lines)}
    for path, (form, words) in expected.items():
        rec = recs[path]
        assert rec["status"] == "ok", (form, rec)
        assert words in " ".join((out / rec["text_path"]).read_text(encoding="utf-8").split()), (form, rec)
    assert len(expected) == 21 and len(result.documents) == 21
    assert {recs[f"c/{a}"]["status"] for a in ("backup.zip", "site.tar", "site.tar.gz", "outer.zip")} == {"unpacked"}
    assert recs["c/outer.zip!/in/inner.zip"]["status"] == "unpacked"
    assert (
        recs["c/site.tar.gz"]["strategy"] == "tar+gzip" and recs["c/site.tar.gz!/memo.docx"]["container"] == "tar+gzip"
    )
    memo = recs["c/xz/memo.docx.xz"]  # one record: the file inside read in its place
    assert (memo["kind"], memo["strategy"], memo["container"]) == ("office", "partition_docx", "xz")
    assert not any((out / "cache" / "unpacked").iterdir())  # the members' bytes went with the run

    again = ingest([tmp_path / "c"], out, workers=2)  # nothing to unpack or read: the cache answers
    assert again.extracted == 0 and [d.text for d in again.documents] == [d.text for d in result.documents]


def test_a_compressed_changelog_without_extension_is_read_as_text(tmp_path):
    write(tmp_path / "c/changelog.gz", gzip.compress(b"pkg (1.0-1) unstable; urgency=low\n\n  * Initial release.\n"))
    write(tmp_path / "c/changelog.Debian.gz", gzip.compress(b"pkg (1.0-2) unstable\n\n  * Packaged.\n"))
    write(tmp_path / "c/blob.gz", gzip.compress(os.urandom(2000)))
    recs = {r.path: r for r in ingest([tmp_path / "c"], tmp_path / "out", workers=1).records}
    assert (recs["c/changelog.gz"].status, recs["c/changelog.gz"].kind) == ("ok", "text")
    assert recs["c/changelog.Debian.gz"].status == "ok"
    assert recs["c/blob.gz"].status == "skipped" and "no reader" in recs["c/blob.gz"].reason


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return zeros_zip("zeros.bin", 1.0)  # ~1 MB: 1 GB of zeros, compressed


def test_hostile_archives_are_refused_member_by_member_and_write_nothing_outside(tmp_path, bomb):
    root = tmp_path / "c"

    def good(archive: str) -> dict[str, bytes]:
        return {"good.txt": f"the good member of {archive} survives\n".encode()}

    write(root / "bomb.zip", _with(bomb, good("bomb.zip")))
    write(root / "escape.zip", zip_bytes({"../../x": b"escaped\n", "/abs/y.txt": b"absolute\n", **good("escape.zip")}))
    tar = {"../../x": b"escaped\n", **good("escape.tar")}
    write(root / "escape.tar", tar_bytes(tar, links={"link.txt": "/etc/passwd"}))
    locked = {"secret.txt": b"secret words\n", **good("locked.zip")}
    write(root / "locked.zip", zip_bytes(locked, encrypt=("secret.txt",)))
    write(root / "corrupt.zip", b"PK\x03\x04" + os.urandom(3000))
    write(root / "corrupt.tar.gz", b"\x1f\x8b\x08\x00" + os.urandom(3000))
    write(root / "bomb.txt.gz", gzip.compress(bytes(1 << 30), compresslevel=1))
    write(root / "fine.md", "a file beside them\n")
    before = _listing(tmp_path)
    out = tmp_path / "out"
    result = ingest([root], out, workers=2)
    recs = {r.path: r for r in result.records}

    def check(path: str, status: str, words: str) -> None:
        assert recs[path].status == status and words in recs[path].reason, recs[path]

    check("c/bomb.zip!/zeros.bin", "error", "decompression bomb")
    check("c/bomb.txt.gz", "error", "decompression bomb")
    check("c/escape.zip!/../../x", "error", "unsafe member name ('..' in the path)")
    check("c/escape.zip!//abs/y.txt", "error", "absolute path")
    check("c/escape.tar!/../../x", "error", "'..'")
    check("c/escape.tar!/link.txt", "skipped", "link inside the archive")
    check("c/locked.zip!/secret.txt", "error", "encrypted")
    check("c/corrupt.zip", "error", "corrupt zip")
    check("c/corrupt.tar.gz", "error", "corrupt gzip")
    for archive in ("bomb.zip", "escape.zip", "escape.tar", "locked.zip"):  # the rest of each archive is read
        assert recs[f"c/{archive}!/good.txt"].status == "ok"
    assert recs["c/fine.md"].status == "ok"
    assert all(p.split("/")[0] == "out" for p in _listing(tmp_path) - before)  # nothing written outside the run folder
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists() and not Path("/abs").exists()
    assert not any((out / "cache" / "unpacked").iterdir())


def _with(bomb: bytes, good: dict[str, bytes]) -> bytes:
    """The bomb zip with a good member added after it."""
    import io
    import zipfile

    buf = io.BytesIO(bomb)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as z:
        for name, data in good.items():
            z.writestr(name, data)
    return buf.getvalue()


def _listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_two_copies_of_a_member_are_one_document_whatever_the_workers(tmp_path):
    """Members are planned in walk order, so which copy is the duplicate does not depend on which worker finished
    first: the same manifest with one worker as with two."""
    root = tmp_path / "c"
    for n in range(3):
        write(root / f"a{n}.zip", zip_bytes({"same.txt": b"the same words\n", f"own{n}.txt": f"own {n}\n".encode()}))

    def run(workers: int) -> list[tuple]:
        out = tmp_path / f"out{workers}"
        recs = ingest([root], out, workers=workers, cache_dir=tmp_path / f"cache{workers}").records
        return [(r.path, r.status, r.reason) for r in recs]

    one = run(1)
    assert one == run(2)
    assert [s for p, s, _ in one if p.endswith("same.txt")] == ["ok", "duplicate", "duplicate"]
