"""HTML/XML, office documents, e-books and e-mail through unstructured's partitioners; workbooks through openpyxl.

Each format needs its own optional packages (pandoc comes inside pypandoc-binary; LibreOffice for .doc and .ppt);
where they are missing the file is `skipped` with the package to install, and the next run tries again.
formats.py says which reader reads which extension.
"""

from __future__ import annotations

import datetime as dt
import importlib
from dataclasses import dataclass
from pathlib import Path

from llm.data import offline
from llm.data.reader import Extraction, Refused, Settings


@dataclass(frozen=True)
class Partition:
    """A reader through `unstructured.partition.<module>.partition_<module>`."""

    module: str  # html, xml, docx, doc, pptx, ppt, xlsx, odt, rtf, epub, email, msg
    needs: str  # what to install when it is missing
    # an e-mail's attachments go through unstructured's auto partitioner: OCR with our languages, never
    # its default layout model (a download)
    attachments: bool = False

    def __call__(self, path: Path, language: str | None, settings: Settings) -> Extraction:
        function = f"partition_{self.module}"
        offline.set_environment()
        try:
            offline.patch_unstructured()
            partition = getattr(importlib.import_module(f"unstructured.partition.{self.module}"), function)
            extra = {"strategy": "ocr_only", "languages": settings.languages} if self.attachments else {}
            elements = partition(filename=str(path), **extra)
        except ImportError as e:
            raise Refused("skipped", f"{path.suffix} needs {self.needs} ({e})", transient=True) from e
        except OSError as e:  # pandoc / soffice not installed, or not runnable
            if any(tool in str(e).lower() for tool in ("pandoc", "soffice", "libreoffice")):
                raise Refused("skipped", f"{path.suffix} needs {self.needs} ({e})", transient=True) from e
            raise
        text = "\n\n".join(e.text for e in elements if getattr(e, "text", "").strip())
        if not text.strip():
            raise Refused("empty", f"{function} found no text")
        return Extraction(text, function)


def spreadsheet(path: Path, language: str | None, settings: Settings) -> Extraction:
    """A workbook as text a model can read: each sheet's name on a line of its own (`# Budget`), then its rows,
    one line each, the cells' values (formulas as last computed) separated by tabs; empty rows and trailing empty
    cells left out."""
    try:
        import openpyxl
    except ImportError as e:
        raise Refused("skipped", f"{path.suffix} needs pip install openpyxl ({e})", transient=True) from e
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        sheets = []
        for sheet in book.worksheets:
            rows = []
            for row in sheet.iter_rows(values_only=True):
                cells = [_cell(v) for v in row]
                while cells and not cells[-1]:
                    cells.pop()
                if cells:
                    rows.append("\t".join(cells))
            if rows:
                sheets.append(f"# {sheet.title}\n" + "\n".join(rows))
    finally:
        book.close()
    if not sheets:
        raise Refused("empty", "workbook has no values")
    return Extraction("\n\n".join(sheets) + "\n", "openpyxl", pages=len(sheets))


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime) and value.time() == dt.time():
        return value.date().isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return " ".join(str(value).split())  # a cell's own tabs and line breaks would split the row


def settings_used(settings: Settings) -> list[str]:
    """The settings these formats' text depends on (part of the cache key): the OCR languages of attachments."""
    return settings.languages
