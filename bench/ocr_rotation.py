"""What turning scans upright costs a page: llm.data.ocr.read_page now against its version at an earlier commit.

    python -m bench.ocr_rotation                       # against ocr.py at 1bb3a4a (before the confidence check)
    python -m bench.ocr_rotation --before HEAD~3 --reps 5

Seven one-page scans (the four of tests/test_ingest_rotation.py and the three of tools/make_sample.py, rendered by
tests.ingest_fixtures.render), upright and turned 180°, each read --reps times after one warm-up read, the median
of the rounds, in one process; then tesseract's orientation detection alone on the upright pages (what running it on
every page would add). Prints seconds per page.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def per_page(fn: Callable, pages: list, reps: int) -> float:
    """Median over reps rounds of the seconds per page."""
    fn(pages[0])  # warm up: tesseract's language data, the imports
    rounds = []
    for _ in range(reps):
        start = time.perf_counter()
        for page in pages:
            fn(page)
        rounds.append((time.perf_counter() - start) / len(pages))
    return statistics.median(rounds)


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="1bb3a4a", help="the commit whose llm/data/ocr.py is the baseline")
    parser.add_argument("--reps", type=int, default=3, help="rounds over the pages; the median is printed")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from llm.data import ocr, offline
    from tests.ingest_fixtures import render
    from tests.test_ingest_rotation import SCANS
    from tools.make_sample import JPEG_LINES, PNG_LINES, SCAN_LINES

    offline.set_environment()
    offline.patch_unstructured()
    old = types.ModuleType("old_ocr")
    source = subprocess.check_output(["git", "show", f"{args.before}:llm/data/ocr.py"], cwd=REPO)
    exec(compile(source, f"{args.before}:llm/data/ocr.py", "exec"), old.__dict__)
    pages = [*SCANS.values(), SCAN_LINES, PNG_LINES, JPEG_LINES]
    for angle in (0, 180):
        images = [png(render(lines).rotate(angle, expand=True, fillcolor=255)) for lines in pages]
        before = per_page(lambda p: old.read_page(p, "ocr_only", ["eng"]), images, args.reps)
        after = per_page(lambda p: ocr.read_page(p, "ocr_only", ["eng"]), images, args.reps)
        change = after - before
        print(
            f"turned {angle:3}: before {before:.3f} s/page, after {after:.3f} s/page, "
            f"added {change:+.3f} s/page ({change / before:+.0%})"
        )
    osd = per_page(ocr.orientation, [render(lines) for lines in pages], args.reps)
    print(f"OSD alone, upright pages: {osd:.3f} s/page (what running it on every page would add)")


if __name__ == "__main__":
    main()
