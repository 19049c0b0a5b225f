"""OCR of one page image through tesseract, turned upright on tesseract's own evidence; and what OCR needs from the
OS (tesseract).

A page is read once (`image_to_data`: the words with tesseract's confidence in each). A page tesseract reads
confidently (characters' mean confidence >= CONFIDENT) is upright: that one pass is its text, so an upright page
costs nothing more. A page read with low confidence is one scanned sideways or upside down (text upside down reads
as `SpUaS JEYIOJG` at confidence ~40, upright text at ~95), or a poor scan: orientation detection (OSD, `--psm 0`)
says by how much to turn it, the turned page is read, and the reading with more confident characters is kept.
Where OSD cannot tell (too few characters), the three other turns are read and compared the same way.

`strategy.image` / `strategy.scanned` other than `ocr_only` (hi_res, auto) read the turned page through
unstructured's partition_image instead of keeping tesseract's own pass.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from llm.data.reader import Refused

log = logging.getLogger(__name__)

INSTALL_HINT = {
    "tesseract": "Debian/Ubuntu: apt-get install tesseract-ocr tesseract-ocr-eng; macOS: brew install tesseract",
}
CONFIDENT = 80.0  # mean confidence (0-100, per character) at which a page counts as read upright
TURNS = (90, 180, 270)  # clockwise
_ROTATE = re.compile(r"Rotate:\s*(\d+)")


def require(binary: str) -> None:
    """Refuse the file (not cached: installing the tool fixes it) when a system tool is missing."""
    if shutil.which(binary) is None:
        raise Refused("error", f"{binary} not found on PATH, needed for OCR ({INSTALL_HINT[binary]})", transient=True)


def elements_text(elements) -> str:
    return "\n".join(e.text for e in elements if getattr(e, "text", "").strip())


@dataclass
class Reading:
    """One tesseract pass over a page: its text (lines, a blank line between blocks) and the evidence."""

    text: str
    chars: int  # characters in the recognised words
    confident_chars: float  # the same, each weighted by tesseract's confidence in its word (0-1)

    @property
    def confidence(self) -> float:
        """Mean confidence per character, 0-100."""
        return 100 * self.confident_chars / self.chars if self.chars else 0.0


def read_words(image, languages: list[str]) -> Reading:
    """One tesseract pass (page segmentation as tesseract's default, psm 3): text and confidences."""
    import unstructured_pytesseract as tesseract

    data = tesseract.image_to_data(image, lang="+".join(languages), output_type=tesseract.Output.DICT)
    lines: dict[tuple[int, int, int], list[str]] = {}
    chars, confident = 0, 0.0
    for block, par, line, word, conf in zip(
        data["block_num"], data["par_num"], data["line_num"], data["text"], data["conf"], strict=True
    ):
        word = word.strip()
        if not word or float(conf) < 0:
            continue
        lines.setdefault((block, par, line), []).append(word)
        chars += len(word)
        confident += len(word) * float(conf) / 100
    text, last_block = [], None
    for (block, _, _), words in lines.items():  # in tesseract's reading order
        if last_block is not None and block != last_block:
            text.append("")
        text.append(" ".join(words))
        last_block = block
    return Reading("\n".join(text), chars, confident)


def orientation(image) -> int | None:
    """Degrees to turn the page clockwise to make it upright (tesseract OSD); None when OSD cannot tell."""
    import unstructured_pytesseract as tesseract

    try:
        osd = tesseract.image_to_osd(image, config="--psm 0")
    except Exception as e:  # too few characters, no osd.traineddata: no answer
        log.debug("orientation not detected: %s", e)
        return None
    m = _ROTATE.search(osd)
    return int(m.group(1)) % 360 if m else None


def turn(image, degrees: int):
    """The page turned clockwise by degrees (PIL turns anticlockwise)."""
    if not degrees:
        return image
    return image.rotate(-degrees, expand=True, fillcolor="white")


def upright(image, languages: list[str]) -> tuple[int, Reading]:
    """(degrees turned clockwise, the reading of the page so turned), decided on tesseract's evidence."""
    first = read_words(image, languages)
    if first.confidence >= CONFIDENT or not first.chars:
        return 0, first
    told = orientation(image)
    if told == 0:  # OSD says upright: a poor page, not a turned one
        return 0, first
    readings = {0: first}
    for degrees in (told,) if told else TURNS:
        readings[degrees] = read_words(turn(image, degrees), languages)
    best = max(readings, key=lambda d: (readings[d].confident_chars, d == 0))
    log.debug("page turned by %d degrees: %s", best, {d: round(r.confidence) for d, r in readings.items()})
    return best, readings[best]


def read_page(source: Path | bytes, strategy: str, languages: list[str]) -> tuple[str, int]:
    """The text of one page image (a file, or PNG bytes), upright, and the degrees it was turned clockwise."""
    from PIL import Image

    with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as opened:
        image = opened.convert("RGB") if opened.mode not in ("L", "RGB") else opened.copy()
    degrees, reading = upright(image, languages)
    if strategy == "ocr_only":
        return reading.text, degrees
    from unstructured.partition.image import partition_image

    buf = io.BytesIO()
    turn(image, degrees).save(buf, format="PNG")
    buf.seek(0)
    return elements_text(partition_image(file=buf, strategy=strategy, languages=languages)), degrees
