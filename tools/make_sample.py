"""Make the sample PDFs and images in data/sample (and the test and benchmark fixtures) from code.

    python -m tools.make_sample [FOLDER]     # default: data/sample in this checkout

A text-layer PDF is written by hand (Helvetica, no embedded font); "scanned" pages are text rendered
into pixels with Pillow's built-in font, so OCR has something real to read and no font file is needed.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"

TEXT_PAGES = [
    [
        "Notes on the transformer",
        "",
        "A transformer block applies causal self-attention and then a small MLP,",
        "each wrapped in a residual connection with layer normalisation first.",
        "Attention lets every position look back at the positions before it.",
    ],
    [
        "Training",
        "",
        "The model predicts the next token. The loss is the cross-entropy",
        "between its predictions and the text shifted by one position.",
        "A cosine schedule with warm-up lowers the learning rate over time.",
    ],
]
SCAN_LINES = ["Dear reader,", "this page was scanned: it has", "no text layer, only pixels.", "OCR recovers the words."]
PNG_LINES = ["Whiteboard: tokenizer ideas", "byte pairs merge into tokens", "vocabulary of 4096 entries"]
JPEG_LINES = ["Receipt 2024-03-14", "Coffee beans 12.50", "Total 12.50 EUR"]


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def text_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF with a text layer: one page per list of lines, Helvetica 12 pt."""
    n = len(pages)
    objs = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, lines in enumerate(pages):
        body = "BT /F1 12 Tf 16 TL 72 720 Td " + " ".join(f"({_escape(line)}) Tj T*" for line in lines) + " ET"
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>"
        )
        objs.append(f"<< /Length {len(body.encode('latin-1'))} >>\nstream\n{body}\nendstream")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def render(lines: list[str], width: int = 1000, size: int = 32) -> Image.Image:
    """Black text on white, as a scanner at ~150 dpi would see a printed page."""
    font = ImageFont.load_default(size=size)
    step = int(size * 1.6)
    img = Image.new("L", (width, 60 + step * len(lines)), 255)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((40, 30 + i * step), line, font=font, fill=0)
    return img


def scanned_pdf(pages: list[list[str]]) -> bytes:
    """An image-only PDF (no text layer): each page a rendered picture of its lines."""
    images = [render(lines) for lines in pages]
    buf = io.BytesIO()
    fixed = time.strptime("2026-01-01", "%Y-%m-%d")  # the same bytes on every run: the sample stays unchanged
    images[0].save(
        buf, format="PDF", resolution=150, save_all=True, append_images=images[1:], creationDate=fixed, modDate=fixed
    )
    return buf.getvalue()


def image_bytes(lines: list[str], fmt: str) -> bytes:
    buf = io.BytesIO()
    img = render(lines)
    (img.convert("RGB") if fmt == "JPEG" else img).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_sample(folder: Path = SAMPLE_DIR) -> list[Path]:
    files = {
        "transformer-notes.pdf": text_pdf(TEXT_PAGES),
        "scanned-letter.pdf": scanned_pdf([SCAN_LINES]),
        "whiteboard.png": image_bytes(PNG_LINES, "PNG"),
        "receipt.jpg": image_bytes(JPEG_LINES, "JPEG"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


if __name__ == "__main__":
    for path in write_sample(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLE_DIR):
        print(path, path.stat().st_size, "bytes")
