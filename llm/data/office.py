"""HTML/XML, office documents, e-books and e-mail through unstructured's partitioners.

Each format needs its own optional packages (and pandoc or LibreOffice for some); where they are
missing the file is `skipped` with the package to install, and the next run tries again.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from llm.data import offline
from llm.data.reader import Extraction, Ingester, Refused, Settings

# extension -> (unstructured.partition module, function, what to install when it is missing)
PARTITIONERS = {
    ".html": ("html", "partition_html", "pip install beautifulsoup4 lxml"),
    ".htm": ("html", "partition_html", "pip install beautifulsoup4 lxml"),
    ".xhtml": ("html", "partition_html", "pip install beautifulsoup4 lxml"),
    ".xml": ("xml", "partition_xml", "pip install lxml"),
    ".docx": ("docx", "partition_docx", "pip install python-docx"),
    ".doc": ("doc", "partition_doc", "LibreOffice (soffice) and python-docx"),
    ".pptx": ("pptx", "partition_pptx", "pip install python-pptx"),
    ".ppt": ("ppt", "partition_ppt", "LibreOffice (soffice) and python-pptx"),
    ".xlsx": ("xlsx", "partition_xlsx", "pip install openpyxl pandas"),
    ".xls": ("xlsx", "partition_xlsx", "pip install openpyxl xlrd pandas"),
    ".odt": ("odt", "partition_odt", "pandoc and pip install pypandoc python-docx"),
    ".rtf": ("rtf", "partition_rtf", "pandoc and pip install pypandoc"),
    ".epub": ("epub", "partition_epub", "pandoc and pip install pypandoc"),
    ".eml": ("email", "partition_email", "unstructured's base install"),
    ".msg": ("msg", "partition_msg", "pip install python-oxmsg"),
}


def _extract(path: Path, language: str | None, settings: Settings) -> Extraction:
    module, function, needs = PARTITIONERS[path.suffix.lower()]
    offline.set_environment()
    try:
        offline.patch_unstructured()
        partition = getattr(importlib.import_module(f"unstructured.partition.{module}"), function)
        # an e-mail's attachments go through unstructured's auto partitioner: OCR with our languages, never
        # its default layout model (a download)
        extra = {"strategy": "ocr_only", "languages": settings.languages} if module in ("email", "msg") else {}
        elements = partition(filename=str(path), **extra)
    except ImportError as e:
        raise Refused("skipped", f"{path.suffix} needs {needs} ({e})", transient=True) from e
    except OSError as e:  # pandoc / soffice not installed, or not runnable
        if any(tool in str(e).lower() for tool in ("pandoc", "soffice", "libreoffice")):
            raise Refused("skipped", f"{path.suffix} needs {needs} ({e})", transient=True) from e
        raise
    text = "\n\n".join(e.text for e in elements if getattr(e, "text", "").strip())
    if not text.strip():
        raise Refused("empty", f"{function} found no text")
    return Extraction(text, function)


INGESTER = Ingester("office", 2, _extract, lambda s: s.languages)  # 2: attachments OCR offline
