"""HTML/XML, office documents, e-books and e-mail through unstructured's partitioners.

Each format needs its own optional packages (and pandoc or LibreOffice for some); where they are
missing the file is `skipped` with the package to install, and the next run tries again.
kinds.py says which partitioner reads which extension.
"""

from __future__ import annotations

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


def settings_used(settings: Settings) -> list[str]:
    """The settings these formats' text depends on (part of the cache key): the OCR languages of attachments."""
    return settings.languages
