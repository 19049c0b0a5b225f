"""Ingestion throughput, 1 worker vs N: files/s and pages/s on data/sample plus generated pages.

    python -m bench.ingest_throughput [--workers N] [--text-pdfs 20] [--scans 12]

Each run starts from an empty cache, so every file is extracted; the worker fork server is warmed
first (once per process, as in any real run) so both rows pay the same start-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from llm.data.pipeline import ingest
from llm.data.worker import cpu_count
from tools import make_sample

ROOT = Path(__file__).resolve().parents[1]


WORDS = "the model reads every page of text and learns which token tends to follow which".split()


def build_corpus(folder: Path, text_pdfs: int, scans: int) -> Path:
    shutil.copytree(ROOT / "data" / "sample", folder / "sample")
    gen = folder / "generated"
    gen.mkdir()
    for i in range(text_pdfs):
        pages = [
            [f"Document {i} page {p} line {k}: " + " ".join(WORDS[(i + p + k) % 7 :]) for k in range(30)]
            for p in range(3)
        ]
        (gen / f"report-{i:03d}.pdf").write_bytes(make_sample.text_pdf(pages))
    for i in range(scans):
        lines = [f"Scanned page {i}", *(" ".join(WORDS[k % 5 : k % 5 + 6]) for k in range(8))]
        (gen / f"scan-{i:03d}.pdf").write_bytes(make_sample.scanned_pdf([lines]))
    return folder


def measure(corpus: Path, workers: int, scratch: Path) -> dict:
    out = scratch / f"out-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = ingest([corpus], out, workers=workers)
    seconds = time.perf_counter() - start
    ok = [r for r in result.records if r.status == "ok"]
    assert result.extracted == len(result.records), "the cache answered: not a throughput figure"
    pages = sum(r.pages for r in ok)
    busy = sum(r.seconds for r in result.records) / seconds  # workers kept busy on average
    return {
        "workers": workers,
        "files": len(ok),
        "pages": pages,
        "seconds": seconds,
        "files/s": len(ok) / seconds,
        "pages/s": pages / seconds,
        "busy": busy,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=cpu_count())
    p.add_argument("--text-pdfs", type=int, default=20, help="generated 3-page PDFs with a text layer")
    p.add_argument("--scans", type=int, default=12, help="generated 1-page scanned PDFs (OCR)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        corpus = build_corpus(scratch / "corpus", args.text_pdfs, args.scans)
        warm = scratch / "warm"
        warm.mkdir()
        (warm / "w.pdf").write_bytes(make_sample.text_pdf([["warm up"]]))
        ingest([warm], scratch / "out-warm", workers=1)  # starts the fork server (imports unstructured)
        load = os.getloadavg()[0]
        rows = [measure(corpus, 1, scratch), measure(corpus, args.workers, scratch)]
        load = max(load, os.getloadavg()[0])
    base = rows[0]["seconds"]
    corpus = f"data/sample + {args.text_pdfs} text PDFs x 3 pages + {args.scans} scanned pages"
    print(f"cores: {os.cpu_count()}   corpus: {corpus}")
    if load > 0.5:
        print(f"note: 1-min load average reached {load:.1f} (other processes): the speed-up is understated")
    header = ("workers", "files", "pages", "seconds", "files/s", "pages/s", "speed-up", "busy")
    widths = (7, 6, 6, 8, 8, 8, 9, 5)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for r in rows:
        cells = (
            f"{r['workers']}",
            f"{r['files']}",
            f"{r['pages']}",
            f"{r['seconds']:.2f}",
            f"{r['files/s']:.2f}",
            f"{r['pages/s']:.2f}",
            f"{base / r['seconds']:.2f}x",
            f"{r['busy']:.2f}",
        )
        print(" ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    print("busy: sum of per-file extraction time / wall time (how many workers were reading at once)")


if __name__ == "__main__":
    main()
