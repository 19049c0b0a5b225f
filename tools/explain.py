"""Worked examples for the docs, computed by the project's own classes with fixed seeds.

Each block of tools/docs_examples/ returns a markdown block; the docs embed it between
`<!-- explain:NAME -->` and `<!-- /explain -->`, and tests/test_docs.py regenerates every block and
compares it with the doc text, so a printed number can never drift from the code.

    python -m tools.explain               # print every block
    python -m tools.explain attention     # print one block
    python -m tools.explain --write       # rewrite the blocks in docs/*.md
    python -m tools.explain --check       # exit 1 if a doc's block differs from the code's output
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tools.docs_examples import attention, embeddings, layers, tokenization, training

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = REPO_ROOT / "docs"
BLOCK_RE = re.compile(r"(<!-- explain:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /explain -->)", re.S)

BLOCKS: dict[str, Callable[[], str]] = {
    **attention.BLOCKS,
    **embeddings.BLOCKS,
    **tokenization.BLOCKS,
    **layers.BLOCKS,
    **training.BLOCKS,
}


def doc_blocks(markdown: str) -> list[tuple[str, str]]:
    """(name, body) of every explain block in a markdown text."""
    return [(m["name"], m["body"]) for m in BLOCK_RE.finditer(markdown)]


def rewrite(markdown: str, cache: dict[str, str] | None = None) -> str:
    """markdown with every explain block's body regenerated; cache holds blocks already rendered."""
    if cache is None:
        cache = {}

    def sub(m: re.Match) -> str:
        name = m["name"]
        if name not in BLOCKS:
            raise KeyError(f"unknown explain block {name!r}; known: {sorted(BLOCKS)}")
        if name not in cache:
            cache[name] = BLOCKS[name]()
        return f"{m[1]}{cache[name]}\n{m[4]}"

    return BLOCK_RE.sub(sub, markdown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.explain", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"blocks to print (default: all): {', '.join(BLOCKS)}")
    parser.add_argument("--write", action="store_true", help="rewrite the blocks in docs/*.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when a doc's block differs from the code")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    unknown = [name for name in args.names if name not in BLOCKS]
    if unknown:
        parser.error(f"unknown block(s) {', '.join(unknown)}; known: {', '.join(BLOCKS)}")
    if args.write or args.check:
        cache: dict[str, str] = {}
        stale = []
        for path in sorted(DOCS_DIR.glob("*.md")):
            old = path.read_text()
            new = rewrite(old, cache)
            if new != old:
                stale.append(path)
                if args.write:
                    path.write_text(new)
        for path in stale:
            log.info("%s %s", "rewrote" if args.write else "differs:", path.relative_to(REPO_ROOT))
        return 1 if stale and args.check else 0
    for name in args.names or BLOCKS:
        sys.stdout.write(f"<!-- explain:{name} -->\n{BLOCKS[name]()}\n<!-- /explain -->\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
