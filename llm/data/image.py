"""Images (png, jpeg, tiff with every page, bmp, webp, gif first frame, heic with pi-heif): OCR through tesseract.

Photos are turned upright by their EXIF orientation first, as a phone's gallery shows them; a page tesseract still
reads with low confidence is turned as its orientation detection says (ocr.read_page), and the turn is recorded.

The size is read from the header before any pixel is decoded, so decompression bombs are refused cheaply.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from llm.data import ocr, offline
from llm.data.reader import Extraction, Refused, Settings

DIRECT = {"PNG", "JPEG", "TIFF"}  # formats unstructured reads as they are; others become PNG pages
EXIF_ORIENTATION = 0x0112


def _open(path: Path, settings: Settings):
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    if path.suffix.lower() in (".heic", ".heif"):
        try:
            from pi_heif import register_heif_opener
        except ImportError as e:
            raise Refused("skipped", "HEIC decoder not installed (pip install pi-heif)", transient=True) from e
        register_heif_opener()
    try:
        with warnings.catch_warnings():  # between 1x and 2x the limit PIL only warns: the check below refuses it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as e:
        raise Refused("skipped", f"decompression bomb refused: {e}") from e
    except UnidentifiedImageError as e:
        raise Refused("error", "unreadable image: no decoder recognises its content") from e
    w, h = image.size
    if w * h > settings.max_image_pixels:
        image.close()
        raise Refused(
            "skipped", f"decompression bomb refused: {w}x{h} pixels > max_image_pixels={settings.max_image_pixels}"
        )
    try:
        image.load()  # decode now: truncated or corrupt data fails here, not inside OCR
    except (OSError, ValueError, SyntaxError) as e:
        image.close()
        raise Refused("error", f"unreadable image: {e}") from e
    return image


def _pages(image) -> list[bytes] | None:
    """PNG bytes of each page to OCR, upright; None when the file can be read as it is."""
    from PIL import ImageOps

    upright = image.getexif().get(EXIF_ORIENTATION, 1) == 1
    count = image.n_frames if image.format == "TIFF" else 1  # a multi-page scan; a GIF's first frame only
    if image.format in DIRECT and upright and count == 1:
        return None
    pages = []
    for i in range(count):
        image.seek(i)
        buf = io.BytesIO()
        ImageOps.exif_transpose(image).convert("RGB").save(buf, format="PNG")  # as a photo viewer shows it
        pages.append(buf.getvalue())
    return pages


def read(path: Path, language: str | None, settings: Settings) -> Extraction:
    image = _open(path, settings)
    ocr.require("tesseract")
    strategy = settings.strategy.get("image") or "ocr_only"
    if strategy != "ocr_only":
        offline.patch_unstructured()
    try:
        pages = _pages(image)
    finally:
        image.close()
    sources = [path] if pages is None else pages
    read = [ocr.read_page(source, strategy, settings.languages) for source in sources]
    text = "\n\n".join(t for t, _ in read if t.strip())
    if not text.strip():
        raise Refused("empty", f"OCR found no text ({strategy})")
    rotated = {n: degrees for n, (_, degrees) in enumerate(read, 1) if degrees}
    return Extraction(text, strategy, pages=len(read), rotated=rotated or None)


def settings_used(settings: Settings) -> list:
    """The settings an image's text depends on (part of its cache key)."""
    return [settings.strategy.get("image"), settings.languages, settings.max_image_pixels]
