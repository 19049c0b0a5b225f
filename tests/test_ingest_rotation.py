"""Scans at any rotation: several pages, each turned by 90, 180 and 270 degrees, as images and as scanned PDF
pages, read with at least 90% of the upright page's words, the turn recorded, and no upside-down garble kept."""

from __future__ import annotations

import io
import re
from collections import Counter

import pytest

from llm.data.pipeline import ingest
from tests.ingest_fixtures import needs_ocr, render, write

SCANS = {
    "letter": [
        "Dear Margaret, the harvest came in early this year",
        "and the orchard behind the mill gave more apples",
        "than we could carry to the market in town.",
        "Your brother sends his love and a jar of honey.",
    ],
    "whiteboard": [
        "Sprint planning: ship the archive reader first",
        "then spreadsheets, then rotated scans",
        "owners: Alice (ingest), Bob (docs)",
        "review on Thursday at ten",
    ],
    "receipt": [
        "Corner Bakery, 12 Mill Street",
        "Sourdough loaf 4.20",
        "Two croissants 3.60",
        "Total paid by card 7.80",
        "Thank you for shopping with us",
    ],
    "recipe": [
        "Tomato soup for four people",
        "Soften one onion in butter, add garlic,",
        "six ripe tomatoes and a litre of stock.",
        "Simmer twenty minutes, then blend smooth.",
    ],
}
ANGLES = (0, 90, 180, 270)  # anticlockwise, as PIL turns


def words(text: str) -> Counter:
    return Counter(re.findall(r"[a-z0-9]+", text.lower()))


@needs_ocr
@pytest.mark.slow
def test_rotated_scans_are_read_upright(tmp_path):
    for name, lines in SCANS.items():
        page = render(lines)
        for angle in ANGLES:
            turned = page.rotate(angle, expand=True, fillcolor=255)
            for fmt in ("PNG", "PDF"):  # an image, and a scanned PDF page (no text layer)
                buf = io.BytesIO()
                turned.save(buf, format=fmt, resolution=150)
                write(tmp_path / "in" / f"{name}-{angle}.{fmt.lower()}", buf.getvalue())
    result = ingest([tmp_path / "in"], tmp_path / "out", workers=2)
    recs = {r.path.removeprefix("in/"): r for r in result.records}
    texts = {d.path.removeprefix("in/"): words(d.text) for d in result.documents}
    for name, lines in SCANS.items():
        printed = words(" ".join(lines))
        for suffix in ("png", "pdf"):
            upright = texts[f"{name}-0.{suffix}"]
            assert sum((upright & printed).values()) >= 0.9 * sum(printed.values()), (name, upright)
            assert recs[f"{name}-0.{suffix}"].rotated is None
            for angle in (90, 180, 270):
                file = f"{name}-{angle}.{suffix}"
                read = texts[file]
                found = sum((read & upright).values()) / sum(upright.values())
                assert found >= 0.9, (file, found, read)
                foreign = sum((read - upright).values()) / sum(read.values())  # words the upright page lacks
                assert foreign <= 0.1, (file, foreign, read)
                # the turn applied is recorded; tesseract reads some sideways pages by itself (its page segmentation
                # finds vertical lines), never an upside-down one
                allowed = [{"1": angle}] if angle == 180 else [{"1": angle}, None]
                assert recs[file].rotated in allowed, (file, recs[file].rotated)
