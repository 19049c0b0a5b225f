"""Ingestion throughput: pages/s per worker on born-digital PDFs (PDFium against pdfminer, with the word-level F1
of their texts) and on scanned pages (OCR), and the scaling from 1 to N workers, in one run.

    python -m bench.ingest_throughput [--pdf FILE ...] [--copies 4] [--scans 8] [--workers 2]

Born-digital set (default): the real manuals Debian installs with two packages, 53 pages in all:
    /usr/share/doc/libtasn1-doc/libtasn1.pdf                      (apt-get install libtasn1-doc)
    /usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf     (apt-get install shared-mime-info)
or any PDFs given with --pdf. Each is read --copies times (a trailing comment makes each copy new content, so
the cache and the duplicate check do not answer). Scanned set: --scans generated one-page scans.

pages/s per worker (steady state) = pages / the workers' summed reading time: start-up (imports, forking) is
left out, and so is waiting for other processes when the machine is shared. The wall-clock rows give the
scaling. Each run starts from an empty cache.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from llm.data.pipeline import IngestResult, ingest
from tools import make_sample

REAL_PDFS = {
    Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"): "libtasn1-doc",
    Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"): "shared-mime-info",
}
WIDTHS = (10, 9, 7, 6, 7, 8, 11, 8)
WORDS = "the model reads every page of text and learns which token tends to follow which".split()


def born_digital(folder: Path, pdfs: list[Path], copies: int) -> Path:
    folder.mkdir(parents=True)
    for pdf in pdfs:
        data = pdf.read_bytes()
        for k in range(copies):
            (folder / f"{pdf.stem}-{k}.pdf").write_bytes(data + f"\n% copy {k}\n".encode())
    return folder


def scanned(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        lines = [f"Scanned page {i}", *(" ".join(WORDS[k % 5 : k % 5 + 6]) for k in range(12))]
        (folder / f"scan-{i:03d}.pdf").write_bytes(make_sample.scanned_pdf([lines]))
    return folder


def run(corpus: Path, out: Path, workers: int, strategy: str) -> tuple[IngestResult, dict]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = ingest([corpus], out, workers=workers, settings={"strategy": {"pdf": strategy}})
    wall = time.perf_counter() - start
    assert result.extracted == len(result.records), "the cache answered: not a throughput figure"
    bad = [r for r in result.records if r.status != "ok"]
    assert not bad, f"not read: {[(r.path, r.reason) for r in bad]}"
    pages = sum(r.pages for r in result.records)
    busy = sum(r.seconds for r in result.records)
    return result, {
        "workers": workers,
        "pages": pages,
        "wall": wall,
        "per_worker": pages / busy,
        "wall_rate": pages / wall,
    }


def words(text: str) -> Counter:
    return Counter(re.findall(r"\w+", text.lower()))


def f1(found: str, reference: str) -> float:
    a, b = words(found), words(reference)
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pdf", nargs="*", type=Path, default=None, help="born-digital PDFs (default: the Debian manuals)")
    p.add_argument("--copies", type=int, default=4, help="times each PDF is read")
    p.add_argument("--scans", type=int, default=8, help="generated one-page scans")
    p.add_argument("--workers", type=int, default=2, help="the N of the 1 -> N scaling")
    args = p.parse_args()
    pdfs = args.pdf or [f for f in REAL_PDFS if f.is_file()]
    if not pdfs:
        raise SystemExit(f"no PDF: apt-get install {' '.join(REAL_PDFS.values())}, or give --pdf FILE")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        digital = born_digital(scratch / "digital", pdfs, args.copies)
        scans = scanned(scratch / "scanned", args.scans)
        warm = scratch / "warm"
        warm.mkdir()
        (warm / "w.png").write_bytes(make_sample.image_bytes(["warm up"], "PNG"))
        ingest([warm], scratch / "out-warm", workers=1)  # the fork server imports the OCR stack, as any real run
        load = os.getloadavg()[0]
        rows = {}
        texts = {}
        for name, corpus, strategy in (("pdfium", digital, "pdfium"), ("pdfminer", digital, "fast")):
            for n in (1, args.workers) if strategy == "pdfium" else (1,):
                result, rows[name, n] = run(corpus, scratch / f"out-{name}-{n}", n, strategy)
                texts[name] = {d.path: d.text for d in result.documents}
        for n in (1, args.workers):
            _, rows["scanned", n] = run(scans, scratch / f"out-scanned-{n}", n, "pdfium")
        load = max(load, os.getloadavg()[0])
    scores = [f1(texts["pdfium"][k], texts["pdfminer"][k]) for k in texts["pdfium"]]
    pages = rows["pdfium", 1]["pages"]
    print(f"born-digital: {', '.join(str(f) for f in pdfs)} x {args.copies} = {pages} pages")
    print(f"scanned: {args.scans} generated one-page scans (tesseract through unstructured, rendered by PDFium)")
    versions = [f"{name} {version(name)}" for name in ("pypdfium2", "pdfminer.six", "unstructured")]
    print(f"{', '.join(versions)} (pdfminer: unstructured's fast strategy)")
    print(f"cores: {os.cpu_count()}, 1-min load average up to {load:.1f}")
    header = ("set", "reader", "workers", "pages", "wall s", "pages/s", "per worker", "scaling")
    print(" ".join(f"{h:<{w}}" if i < 2 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, WIDTHS, strict=True))))
    for (name, n), r in rows.items():
        base = rows[name, 1]["wall"]
        what = ("scanned", "ocr") if name == "scanned" else ("digital", name)
        print(
            f"{what[0]:<10} {what[1]:<9} {n:>7} {r['pages']:>6} {r['wall']:>7.2f} {r['wall_rate']:>8.1f}"
            f" {r['per_worker']:>11.1f} {base / r['wall']:>7.2f}x"
        )
    speed = rows["pdfium", 1]["per_worker"] / rows["pdfminer", 1]["per_worker"]
    print(f"pdfium vs pdfminer: {speed:.1f}x pages/s per worker; word-level F1 of pdfium's text against pdfminer's:")
    print(f"  min {min(scores):.4f}, mean {sum(scores) / len(scores):.4f} over {len(scores)} files")
    print("per worker: pages / summed per-file reading time (steady state: start-up and waiting left out)")


if __name__ == "__main__":
    main()
