"""OCR of one page image through unstructured (tesseract), turned upright by tesseract's orientation detection
(OSD) when the first pass reads badly; and what OCR needs from the OS (tesseract).

A page scanned sideways or upside down gives tesseract's first pass little or garbled text (`Aouoy Jo Jef`).
Such a page is measured by `reads_well`; OSD (`--psm 0`, osd.traineddata) then says by how much to turn it,
and the second pass on the turned page is kept when it reads better.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
from pathlib import Path

from llm.data.reader import Refused

log = logging.getLogger(__name__)

INSTALL_HINT = {
    "tesseract": "Debian/Ubuntu: apt-get install tesseract-ocr tesseract-ocr-eng; macOS: brew install tesseract",
}
MIN_WORDS = 3  # fewer well-formed words than this: the first pass found little
MIN_SHARE = 0.75  # under this share of well-formed words among the tokens with letters: garbled
_TOKEN = re.compile(r"\w+")
_ROTATE = re.compile(r"Rotate:\s*(\d+)")


def require(binary: str) -> None:
    """Refuse the file (not cached: installing the tool fixes it) when a system tool is missing."""
    if shutil.which(binary) is None:
        raise Refused("error", f"{binary} not found on PATH, needed for OCR ({INSTALL_HINT[binary]})", transient=True)


def elements_text(elements) -> str:
    return "\n".join(e.text for e in elements if getattr(e, "text", "").strip())


def _well_formed(token: str) -> bool:
    """A word as printed: lower case, Capitalised or CAPITALS (an upside-down page gives `SpUaS`, `}O4JEW`)."""
    return token.isalpha() and (token == token.lower() or token.isupper() or token.istitle())


def word_score(text: str) -> tuple[int, float]:
    """(well-formed words, their share of the tokens that hold letters)."""
    tokens = [t for t in _TOKEN.findall(text) if any(c.isalpha() for c in t)]
    good = sum(_well_formed(t) for t in tokens)
    return good, good / len(tokens) if tokens else 0.0


def reads_well(text: str) -> bool:
    good, share = word_score(text)
    return good >= MIN_WORDS and share >= MIN_SHARE


def orientation(image) -> int:
    """Degrees to turn the page clockwise to make it upright (tesseract OSD); 0 when OSD cannot tell."""
    import unstructured_pytesseract as tesseract

    try:
        osd = tesseract.image_to_osd(image, config="--psm 0")
    except Exception as e:  # too few characters, no osd.traineddata: keep the page as it is
        log.debug("orientation not detected: %s", e)
        return 0
    m = _ROTATE.search(osd)
    return int(m.group(1)) % 360 if m else 0


def _partition(source: Path | bytes, strategy: str, languages: list[str]) -> str:
    from unstructured.partition.image import partition_image

    if isinstance(source, Path):
        return elements_text(partition_image(filename=str(source), strategy=strategy, languages=languages))
    return elements_text(partition_image(file=io.BytesIO(source), strategy=strategy, languages=languages))


def read_page(source: Path | bytes, strategy: str, languages: list[str]) -> str:
    """The text of one page image (a file tesseract reads as it is, or PNG bytes), upright."""
    text = _partition(source, strategy, languages)
    if reads_well(text):
        return text
    from PIL import Image

    with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
        angle = orientation(image)
        if not angle:
            return text
        upright = image.convert("RGB").rotate(-angle, expand=True, fillcolor=(255, 255, 255))  # PIL turns anticlockwise
        buf = io.BytesIO()
        upright.save(buf, format="PNG")
    turned = _partition(buf.getvalue(), strategy, languages)
    log.debug("page turned by %d degrees: %s -> %s words", angle, word_score(text), word_score(turned))
    return turned if word_score(turned) > word_score(text) else text
