"""PDF: the text layer page by page; pages without one (scans) rendered and read by OCR (ocr.read_page).

strategy.pdf picks the text-layer extractor:
- `pdfium` (default): PDFium's text layer through pypdfium2, tidied by unstructured's cleaners (ligatures,
  soft hyphens, line ends). About 20x faster than pdfminer at word-level F1 0.9998 against it on real manuals
  (docs/data.md, bench/ingest_throughput.py).
- `fast`: unstructured's `partition_pdf(strategy="fast")` (pdfminer), element by element.
- `hi_res`, `ocr_only`, `auto`: unstructured's partition_pdf for the whole document.

Mixed documents work page by page: only the pages whose text layer is empty are rendered and OCR'd, each turned
upright on tesseract's evidence (ocr.read_page); the manifest's `rotated` names the pages turned.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

from llm.data import ocr, offline
from llm.data.reader import Extraction, Refused, Settings

OCR_DPI = 200  # rendering resolution of a page without a text layer


def _open(path: Path):
    """The PDFium document; refuses files that are not PDFs, are encrypted, or cannot be parsed at all."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    with path.open("rb") as f:
        head = f.read(1024)
    if b"%PDF-" not in head:
        shown = head[:16].decode("latin-1").encode("unicode_escape").decode()
        raise Refused("error", f"not a PDF: it starts with {shown!r}")
    try:
        doc = pdfium.PdfDocument(path)  # an empty user password is tried, as viewers do
    except pdfium.PdfiumError as e:
        if getattr(e, "err_code", None) == raw.FPDF_ERR_PASSWORD:
            raise Refused("error", "encrypted PDF: it needs a password") from e
        raise Refused("error", f"corrupt PDF: {e}") from e
    if len(doc) == 0:
        doc.close()
        raise Refused("empty", "PDF has no pages")
    return doc


def _by_page(elements) -> dict[int, str]:
    pages: dict[int, list[str]] = defaultdict(list)
    for e in elements:
        if getattr(e, "text", "").strip():
            pages[e.metadata.page_number or 1].append(e.text)
    return {p: "\n".join(lines) for p, lines in pages.items()}


def clean_page(text: str) -> str:
    """PDFium's page text as plain lines: \\r\\n -> \\n, its soft-hyphen marks (\\x02, where it already joined the
    word) and non-characters dropped, ligatures (ﬁ, ﬂ) spelt out by unstructured's cleaner."""
    from unstructured.cleaners.core import clean_ligatures

    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x02", "").replace("\ufffe", "")
    return clean_ligatures("\n".join(line.rstrip() for line in text.split("\n"))).strip()


def _pdfium_pages(doc) -> dict[int, str]:
    """Page number (1-based) -> its cleaned text layer, for the pages that have one."""
    pages = {}
    for i in range(len(doc)):
        page = doc[i]
        textpage = page.get_textpage()
        text = clean_page(textpage.get_text_bounded())
        textpage.close()
        page.close()
        if text:
            pages[i + 1] = text
    return pages


def _render(doc, numbers: list[int]) -> list[bytes]:
    """PNG bytes of the given pages (1-based), rendered by PDFium at OCR_DPI."""
    out = []
    for n in numbers:
        page = doc[n - 1]
        image = page.render(scale=OCR_DPI / 72, grayscale=True).to_pil()
        page.close()
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def read(path: Path, language: str | None, settings: Settings) -> Extraction:
    doc = _open(path)
    try:
        return _read(doc, path, settings)
    finally:
        doc.close()


def _read(doc, path: Path, settings: Settings) -> Extraction:
    n_pages = len(doc)
    first = settings.strategy.get("pdf") or "pdfium"
    scanned = settings.strategy.get("scanned")
    langs = settings.languages
    if first == "pdfium":
        pages = _pdfium_pages(doc)
    else:
        if first != "fast":
            ocr.require("tesseract")
        offline.patch_unstructured()
        from unstructured.partition.pdf import partition_pdf

        pages = _by_page(partition_pdf(filename=str(path), strategy=first, languages=langs))
    missing = [p for p in range(1, n_pages + 1) if p not in pages]
    used = first
    rotated = {}
    if missing and scanned and first in ("pdfium", "fast"):
        ocr.require("tesseract")
        if scanned != "ocr_only":
            offline.patch_unstructured()
        for p, png in zip(missing, _render(doc, missing), strict=True):
            text, degrees = ocr.read_page(png, scanned, langs)
            if text.strip():
                pages[p] = text
            if degrees:
                rotated[p] = degrees
        used = scanned if len(missing) == n_pages else f"{first}+{scanned}"
    text = "\n\n".join(pages[p] for p in sorted(pages))
    if not text.strip():
        raise Refused("empty", f"no text found in {n_pages} page(s) (strategy {used})")
    starts, at = {}, 0
    for p in sorted(pages):  # where each page's text begins: the index cites passages by page (llm/retrieval)
        starts[p] = at
        at += len(pages[p]) + 2
    return Extraction(text, used, pages=n_pages, rotated=rotated or None, page_starts=starts)


def settings_used(settings: Settings) -> list:
    """The settings a PDF's text depends on (part of its cache key)."""
    return [settings.strategy.get("pdf"), settings.strategy.get("scanned"), settings.languages]
