"""PDF: the text layer with unstructured's `fast` strategy; pages without one (scans) through OCR.

Mixed documents work page by page: only the pages that came back empty are rendered and OCR'd.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

from llm.data import ocr, offline
from llm.data.reader import Extraction, Refused, Settings


def _check(path: Path) -> int:
    """Page count; refuses files that are not PDFs, are encrypted, or cannot be parsed at all."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PdfReadError

    with path.open("rb") as f:
        head = f.read(1024)
    if b"%PDF-" not in head:
        shown = head[:16].decode("latin-1").encode("unicode_escape").decode()
        raise Refused("error", f"not a PDF: it starts with {shown!r}")
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Refused("error", "encrypted PDF: it needs a password")
        pages = len(reader.pages)
    except Refused:
        raise
    except (PdfReadError, DependencyError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise Refused("error", f"corrupt PDF: {type(e).__name__}: {e}") from e
    if pages == 0:
        raise Refused("empty", "PDF has no pages")
    return pages


def _by_page(elements) -> dict[int, str]:
    pages: dict[int, list[str]] = defaultdict(list)
    for e in elements:
        if getattr(e, "text", "").strip():
            pages[e.metadata.page_number or 1].append(e.text)
    return {p: "\n".join(lines) for p, lines in pages.items()}


def _page_bytes(path: Path, page: int) -> bytes:
    from pypdf import PdfReader, PdfWriter

    reader = PdfReader(path)
    if reader.is_encrypted:
        reader.decrypt("")
    writer = PdfWriter()
    writer.add_page(reader.pages[page - 1])
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def read(path: Path, language: str | None, settings: Settings) -> Extraction:
    n_pages = _check(path)
    offline.patch_unstructured()
    from unstructured.partition.pdf import partition_pdf

    first = settings.strategy.get("pdf") or "fast"
    scanned = settings.strategy.get("scanned")
    langs = settings.languages
    if first != "fast":
        ocr.require("tesseract")
    pages = _by_page(partition_pdf(filename=str(path), strategy=first, languages=langs))
    missing = [p for p in range(1, n_pages + 1) if p not in pages]
    used = first
    if missing and scanned and first == "fast":
        ocr.require("tesseract")
        ocr.require("pdftoppm")
        if len(missing) == n_pages:  # a scan: one call for the whole document
            pages = _by_page(partition_pdf(filename=str(path), strategy=scanned, languages=langs))
            used = scanned
        else:  # mixed: OCR the empty pages only
            for p in missing:
                one = partition_pdf(file=io.BytesIO(_page_bytes(path, p)), strategy=scanned, languages=langs)
                text = ocr.elements_text(one)
                if text:
                    pages[p] = text
            used = f"{first}+{scanned}"
    text = "\n\n".join(pages[p] for p in sorted(pages))
    if not text.strip():
        raise Refused("empty", f"no text found in {n_pages} page(s) (strategy {used})")
    return Extraction(text, used, pages=n_pages)


def settings_used(settings: Settings) -> list:
    """The settings a PDF's text depends on (part of its cache key)."""
    return [settings.strategy.get("pdf"), settings.strategy.get("scanned"), settings.languages]
