"""Imported once by the worker fork server when a run has images, office files or PDFs read by unstructured.

unstructured's partitioners take seconds to import and to run the first time (spaCy, pdfminer, torch
through thinc); done here once, every worker forked from the server starts warm.
"""

import io
import logging

from llm.data import offline

_TINY_PDF = (
    b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
    b"\nendobj\n3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Resources << /Font << /F1 4 0 R >> >>"
    b" /Contents 5 0 R >>\nendobj\n4 0 obj\n<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>\nendobj\n5 0 obj\n"
    b"<< /Length 35 >>\nstream\nBT /F1 12 Tf 10 50 Td (Warm.) Tj ET\nendstream\nendobj\n"
    b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
)


def _warm() -> None:
    offline.patch_unstructured()
    import pypdfium2  # noqa: F401
    from unstructured.cleaners.core import clean_ligatures  # noqa: F401
    from unstructured.nlp import tokenize
    from unstructured.partition.image import partition_image  # noqa: F401
    from unstructured.partition.pdf import partition_pdf

    tokenize._get_nlp()
    partition_pdf(file=io.BytesIO(_TINY_PDF), strategy="fast", languages=["eng"])


try:
    _warm()
except Exception as e:  # the ingest extra is missing or broken: the workers report it file by file
    logging.getLogger(__name__).debug("warm-up failed: %s", e)
