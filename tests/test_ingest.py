"""Each kind of file ingests with the right text, strategy and manifest record."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import pytest

from llm.data.formats import REGISTRY, Format, Registry
from llm.data.pipeline import ingest
from tests.ingest_fixtures import CODE, LATIN1, kinds_corpus, needs_ocr, write


def words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = kinds_corpus(tmp_path_factory.mktemp("in") / "kinds")
    out = tmp_path_factory.mktemp("out")
    result = ingest([root], out, workers=2)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    return root, out, result, {r["path"]: r for r in manifest}


def doc(run, name: str):
    return next(d for d in run[2].documents if d.path == f"kinds/{name}")


def test_manifest_has_every_file_with_the_required_fields(run):
    root, out, _, manifest = run
    files = {f"kinds/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file()}
    assert set(manifest) == files
    for rec in manifest.values():
        assert {"path", "sha256", "bytes", "kind", "strategy", "status", "chars", "seconds"} <= set(rec)
        if rec["status"] == "ok":
            text = (out / rec["text_path"]).read_text(encoding="utf-8")
            assert len(text) == rec["chars"] > 0
            assert rec["sha256"] == hashlib.sha256((root.parent / rec["path"]).read_bytes()).hexdigest()
        else:
            assert rec["reason"]


def test_pdf_text_layer(run):
    rec = run[3]["kinds/notes.pdf"]
    assert (rec["status"], rec["strategy"], rec["pages"]) == ("ok", "pdfium", 2)
    assert "Alpha beta gamma text layer." in doc(run, "notes.pdf").text
    assert "Second page words." in doc(run, "notes.pdf").text


@needs_ocr
def test_scanned_pdf_goes_through_ocr(run):
    rec = run[3]["kinds/scan.pdf"]
    assert (rec["status"], rec["strategy"]) == ("ok", "ocr_only"), rec
    assert "scanned words here" in words(doc(run, "scan.pdf").text)


@needs_ocr
def test_mixed_pdf_ocrs_only_the_page_without_text(run):
    rec = run[3]["kinds/mixed.pdf"]
    assert (rec["status"], rec["strategy"], rec["pages"]) == ("ok", "pdfium+ocr_only", 2), rec
    text = doc(run, "mixed.pdf").text
    assert "Typed first page." in text and "scanned second page" in words(text)
    assert words(text).index("typed first page") < words(text).index("scanned second page")  # page order kept


@needs_ocr
@pytest.mark.parametrize("name, expected", [("sign.png", "hello from a png"), ("photo.jpg", "hello from a jpeg")])
def test_images_go_through_ocr(run, name, expected):
    rec = run[3][f"kinds/{name}"]
    assert (rec["status"], rec["kind"], rec["strategy"]) == ("ok", "image", "ocr_only"), rec
    assert expected in words(doc(run, name).text)


def test_code_is_verbatim_with_its_language(run):
    rec = run[3]["kinds/src/greet.py"]
    assert (rec["kind"], rec["language"], rec["strategy"]) == ("code", "python", "verbatim")
    assert doc(run, "src/greet.py").text == CODE  # tabs, trailing spaces, blank lines, comments


def test_latin1_text_is_decoded_not_dropped(run):
    assert run[3]["kinds/old.txt"]["status"] == "ok"
    assert doc(run, "old.txt").text == LATIN1


GERMAN = "Grüße aus Köln, schöne Straße, Mädchen über alles.\n"


@pytest.mark.parametrize(
    "data, text",
    [
        (GERMAN.encode()[:-3] + "日".encode()[:2], GERMAN[:-3] + "\ufffd"),  # cut off mid-character (head -c)
        (GERMAN.encode() + b"\xff" + "日本語".encode(), GERMAN + "\ufffd日本語"),  # one stray byte in UTF-8
        ("£5 for a naïve café — déjà vu.\n".encode("cp1252"), "£5 for a naïve café — déjà vu.\n"),
        ("¿Qué tal? ¡Muy bien!\n".encode("cp1252"), "¿Qué tal? ¡Muy bien!\n"),
        ("Zażółć gęślą jaźń. Mały żółw.\n".encode("cp1250"), "Zażółć gęślą jaźń. Mały żółw.\n"),
        ("Привет, как дела? Это текст.\n".encode("cp1251"), "Привет, как дела? Это текст.\n"),
        (GERMAN.encode("utf-16"), GERMAN),  # byte-order mark
        (GERMAN.encode("utf-32"), GERMAN),
        (b"line one\r\nline two\r\n", "line one\r\nline two\r\n"),
    ],
)
def test_text_encodings(data, text):
    from llm.data.text import read_text

    assert read_text(data) == (text, None)


def test_crlf_text_stays_verbatim(tmp_path):
    write(tmp_path / "c/win.txt", b"one\r\ntwo\r\n")
    result = ingest([tmp_path / "c"], tmp_path / "out", workers=1)
    assert result.documents[0].text == "one\r\ntwo\r\n" and result.records[0].chars == 10


def test_html_through_unstructured(run):
    rec = run[3]["kinds/page.html"]
    assert (rec["status"], rec["kind"]) == ("ok", "html"), rec
    assert "Some html paragraph." in doc(run, "page.html").text


def test_documents_carry_path_sha_and_lazy_text(run):
    root, _, result, manifest = run
    ok = [p for p, r in manifest.items() if r["status"] == "ok"]
    assert sorted(d.path for d in result.documents) == sorted(ok)
    for d in result.documents:
        assert d.sha256 == manifest[d.path]["sha256"] and d.text


@needs_ocr
def test_messy_files_arrive_whole(tmp_path):
    """Every page of a TIFF, a photo turned upright, e-mail image attachments OCR'd offline, a PDF without
    extension, a PNG whose metadata mentions %PDF-, a notebook as its cells."""
    import email.message
    import io
    import json

    from PIL import Image

    from tests.ingest_fixtures import render, text_pdf

    root = tmp_path / "c"
    pages = [render(["first tiff page"]), render(["second tiff page"])]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    write(root / "scan.tif", buf.getvalue())
    photo = render(["sideways photo words"]).rotate(90, expand=True).convert("RGB")  # stored as a phone does
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", exif=exif, quality=95)
    write(root / "photo.jpg", buf.getvalue())
    msg = email.message.EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = "notes", "a@example.com", "b@example.com"
    msg.set_content("Body of the mail.\n")
    buf = io.BytesIO()
    render(["attached picture words"]).save(buf, format="PNG")
    msg.add_attachment(buf.getvalue(), maintype="image", subtype="png", filename="pic.png")
    write(root / "mail.eml", bytes(msg))
    write(root / "SUMMARY", text_pdf([["summary without extension"]]))
    buf = io.BytesIO()
    meta = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    meta.add_text("Comment", "exported from a %PDF-1.7 viewer")
    render(["png with comment"]).save(buf, format="PNG", pnginfo=meta)
    write(root / "comment.png", buf.getvalue())
    cells = [
        {"cell_type": "markdown", "source": ["# Title\n", "prose"]},
        {"cell_type": "code", "source": "x = 1", "outputs": [{"data": {"image/png": "iVBORw0KGgo" * 50}}]},
    ]
    write(root / "nb.ipynb", json.dumps({"cells": cells, "metadata": {}, "nbformat": 4}))

    result = ingest([root], tmp_path / "out", workers=2)
    recs = {r.path.removeprefix("c/"): r for r in result.records}
    texts = {d.path.removeprefix("c/"): words(d.text) for d in result.documents}
    assert "first tiff page" in texts["scan.tif"] and "second tiff page" in texts["scan.tif"]
    assert recs["scan.tif"].pages == 2
    assert "sideways photo words" in texts["photo.jpg"]
    assert "body of the mail" in texts["mail.eml"] and "attached picture words" in texts["mail.eml"]
    assert (recs["SUMMARY"].kind, texts["SUMMARY"]) == ("pdf", "summary without extension")
    assert recs["comment.png"].kind == "image" and "png with comment" in texts["comment.png"]
    nb = next(d.text for d in result.documents if d.path == "c/nb.ipynb")
    assert nb == "# Title\nprose\n\nx = 1\n" and recs["nb.ipynb"].language == "python"


@pytest.mark.parametrize(
    "name, head, kind, language",
    [
        ("notes.pdf", b"\x89PNG\r\n\x1a\n....", "image", None),  # the content wins over the extension
        ("SUMMARY", b"%PDF-1.7\n", "pdf", None),  # a README-like name on a PDF
        ("SUMMARY", b"BMW and Audi sales\n", "text", None),  # text may begin "BM": not a bitmap
        ("comment.png", b"\x89PNG\r\n\x1a\n tEXt exported from a %PDF-1.7 viewer", "image", None),
        ("data.bin", b"junk before %PDF-1.4", "pdf", None),  # PDF readers accept a header in the first kilobyte
        ("data.bin", b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image", None),
        ("data.bin", b"\x00\x01\x02", None, None),
        ("Makefile", b"all:\n", "code", "make"),
        ("Tool.PY", b"x = 1\n", "code", "python"),
        ("nb.ipynb", b"{", "code", "notebook"),
        ("page.xhtml", b"<html>", "html", None),
        ("mail.msg", b"\xd0\xcf\x11\xe0", "email", None),
    ],
)
def test_the_registry_picks_the_format_by_name_then_content(name, head, kind, language):
    fmt, lang = REGISTRY.kind_of(Path(name), head)
    assert (fmt.kind if fmt else None, lang) == (kind, language)


def test_every_reader_reaches_a_worker_by_reference_and_no_extension_is_claimed_twice():
    for fmt in REGISTRY.formats:
        assert pickle.loads(pickle.dumps(fmt.read)) == fmt.read, fmt.kind
    text = next(f for f in REGISTRY.formats if f.kind == "text")
    with pytest.raises(ValueError, match="'.md' is claimed by two formats: text and text"):
        Registry([*REGISTRY.formats, Format("text", text.read, version=1, extensions={".md": None})])
