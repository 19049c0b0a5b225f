"""python -m llm.ingest INPUT [INPUT ...] --out DIR [--workers N]: the DataModule's ingestion, alone.

--backend ray [--address ADDR] reads the files on a Ray cluster instead of local worker processes.

Writes DIR/manifest.jsonl and DIR/text/, prints the summary; exits 1 when no usable document remains, 2 when an
input does not exist.
"""

from __future__ import annotations

import argparse
import logging
import sys

from llm.data.discover import DEFAULT_EXCLUDE, expand_paths
from llm.data.pipeline import format_summary, ingest
from llm.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llm.ingest", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="folders, files or glob patterns (~ and $VARS expand)")
    p.add_argument("--out", required=True, help="output folder: manifest.jsonl, text/, cache/")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    p.add_argument("--cache", default=None, help="cache folder (default: OUT/cache)")
    p.add_argument("--backend", choices=["local", "ray"], default=None, help="where files are read (default: local)")
    p.add_argument("--address", default=None, help="--backend ray: the cluster, e.g. ray://HOST:10001 or auto")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per file")
    p.add_argument("--exclude", action="append", default=None, help="glob to exclude (repeatable; replaces defaults)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    settings = {"timeout_s": args.timeout} if args.timeout else {}
    settings |= {key: value for key in ("backend", "address") if (value := getattr(args, key)) is not None}
    exclude = tuple(args.exclude or DEFAULT_EXCLUDE)
    try:
        inputs = expand_paths(args.inputs, key="INPUT")
        result = ingest(inputs, args.out, exclude, settings=settings, cache_dir=args.cache, workers=args.workers)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(result))
    print(f"manifest: {args.out}/manifest.jsonl")
    if not result.documents:
        print(f"error: no usable document under {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
