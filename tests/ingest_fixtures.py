"""Builders for the ingestion tests: small corpora of every kind, and a hostile folder."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from llm.data import formats
from llm.data.formats import Format, Registry
from tools import make_sample

text_pdf = make_sample.text_pdf
scanned_pdf = make_sample.scanned_pdf
image_bytes = make_sample.image_bytes
render = make_sample.render

OCR_TOOLS = ("tesseract", "pdftoppm")  # OCR itself; poppler's renderer of PDF pages
_missing = [tool for tool in OCR_TOOLS if shutil.which(tool) is None]
# CI installs both and runs every test: there a missing tool fails the OCR tests instead of skipping them
needs_ocr = pytest.mark.skipif(
    bool(_missing) and not os.environ.get("CI"),
    reason=f"needs {' and '.join(_missing)} on PATH (apt-get install tesseract-ocr tesseract-ocr-eng poppler-utils)",
)


def use_formats(monkeypatch: pytest.MonkeyPatch, *extra: Format) -> None:
    """The registry of file kinds, plus these formats, for one test."""
    monkeypatch.setattr(formats, "REGISTRY", Registry([*formats.REGISTRY.formats, *extra]))


CODE = '''def greet(name):
    """Say hello."""

    # a comment, kept
    if name:
\treturn f"hello {name}"   \n
        return "hello"
'''
LATIN1 = "Café crème, déjà vu: naïve façade à Noël.\n"


def mixed_pdf(text_lines: list[str], scan_lines: list[str]) -> bytes:
    """Page 1 with a text layer, page 2 a scan."""
    from pypdf import PdfReader, PdfWriter

    w = PdfWriter()
    w.add_page(PdfReader(io.BytesIO(text_pdf([text_lines]))).pages[0])
    w.add_page(PdfReader(io.BytesIO(scanned_pdf([scan_lines]))).pages[0])
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def encrypted_pdf(password: str = "secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    w = PdfWriter()
    w.add_page(PdfReader(io.BytesIO(text_pdf([["Top secret words"]]))).pages[0])
    w.encrypt(password, algorithm="RC4-128")
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def bomb_png(side: int = 60_000) -> bytes:
    """A valid PNG header claiming side x side pixels, with a few bytes of data: a decompression bomb."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + chunk(b"IEND", b"")
    )


def docx_bytes(paragraphs: list[str]) -> bytes:
    import docx

    d = docx.Document()
    for p in paragraphs:
        d.add_paragraph(p)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes], encrypt: tuple[str, ...] = ()) -> bytes:
    """A zip of these members; those named in `encrypt` carry the encryption flag (as a password-protected zip's
    members do: Python writes no encrypted zips, and the flag is what a reader must refuse on)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    data = bytearray(buf.getvalue())
    for name in encrypt:
        raw = name.encode()
        for signature, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
            at = data.find(signature)
            while at >= 0:
                if data[at + name_at : at + name_at + len(raw)] == raw:
                    data[at + flag_at] |= 0x1
                at = data.find(signature, at + 4)
    return bytes(data)


def tar_bytes(members: dict[str, bytes], mode: str = "w", links: dict[str, str] | None = None) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return buf.getvalue()


def zeros_zip(name: str, gigabytes: float = 1.0) -> bytes:
    """A zip bomb: one member of `gigabytes` of zeros, about a thousand times smaller compressed."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open(name, "w", force_zip64=True) as f:
        chunk = bytes(64 << 20)
        for _ in range(int(gigabytes * 16)):
            f.write(chunk)
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def kinds_corpus(root: Path) -> Path:
    """One good file of each kind, with known text."""
    write(root / "notes.pdf", text_pdf([["Alpha beta gamma text layer."], ["Second page words."]]))
    write(root / "scan.pdf", scanned_pdf([["Scanned words here"]]))
    write(root / "mixed.pdf", mixed_pdf(["Typed first page."], ["Scanned second page"]))
    write(root / "sign.png", image_bytes(["Hello from a PNG"], "PNG"))
    write(root / "photo.jpg", image_bytes(["Hello from a JPEG"], "JPEG"))
    write(root / "src/greet.py", CODE)
    write(root / "old.txt", LATIN1.encode("latin-1"))
    write(root / "page.html", "<html><body><h1>Title</h1><p>Some html paragraph.</p></body></html>")
    return root


# hostile file -> (expected status, a word the reason must contain)
HOSTILE = {
    "corrupt.pdf": ("error", "PDF"),
    "truncated.pdf": ("error", "PDF"),
    "encrypted.pdf": ("error", "password"),
    "fake.pdf": ("error", "not a PDF"),
    "empty.pdf": ("empty", "empty"),
    "bomb.png": ("skipped", "decompression bomb"),
    "broken.png": ("error", "image"),
    "text-named.jpg": ("error", "image"),
    "binary.txt": ("skipped", "binary"),
    "empty.txt": ("empty", "empty"),
    "blank.md": ("empty", "whitespace"),
    "data.bin": ("skipped", "no reader"),
    "dup/copy.py": ("duplicate", "same content"),
    "loop": ("skipped", "symbolic link"),
    "dangling.txt": ("error", "broken symbolic link"),
    "fifo.txt": ("skipped", "not a regular file"),
    ".git": ("excluded", "exclude"),
    "node_modules": ("excluded", "exclude"),
}
GOOD = {  # file -> text that must be recovered
    "good.py": 'def greet(name):\n    """Say hello."""',
    "latin1.txt": "Café crème",
    "png-named.pdf": "Mislabelled",
    "résumé-日本.md": "unicode name",
    "deep/" + "/".join(f"d{i}" for i in range(40)) + "/leaf.txt": "deep leaf",
    "bad\udcffname.txt": "odd bytes in name",
}
GOOD_BY_OCR = {"png-named.pdf"}  # the good files whose text only OCR recovers


def hostile_corpus(root: Path) -> Path:
    good_pdf = text_pdf([["Recoverable text. " * 20]])
    write(root / "corrupt.pdf", b"%PDF-1.4\n" + os.urandom(2000))
    write(root / "truncated.pdf", good_pdf[: -len(good_pdf) // 2][:200])
    write(root / "encrypted.pdf", encrypted_pdf())
    write(root / "fake.pdf", "<html>this is not a pdf at all</html>")
    write(root / "empty.pdf", b"")
    write(root / "bomb.png", bomb_png())
    write(root / "broken.png", b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    write(root / "text-named.jpg", "just some text, not a JPEG")
    write(root / "binary.txt", bytes(range(256)) * 8)
    write(root / "empty.txt", b"")
    write(root / "blank.md", "  \n\n\t \n")
    write(root / "data.bin", os.urandom(64))
    write(root / "good.py", CODE)
    write(root / "dup/copy.py", CODE)
    write(root / "latin1.txt", LATIN1.encode("latin-1"))
    write(root / "png-named.pdf", image_bytes(["Mislabelled picture"], "PNG"))
    write(root / "résumé-日本.md", "A file with a unicode name.\n")
    write(root / list(GOOD)[4], "a deep leaf\n")
    write(root / "bad\udcffname.txt", "odd bytes in name\n")  # not valid UTF-8 on disk
    write(root / ".git/config", "[core]\n")
    write(root / "node_modules/pkg/index.js", "module.exports = 1\n")
    os.symlink(".", root / "loop")  # a cycle
    os.symlink("missing-target.txt", root / "dangling.txt")
    os.mkfifo(root / "fifo.txt")
    return root
