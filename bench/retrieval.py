"""How far one machine goes with the retrieval index: build time, size and query time at a number of passages.

    python -m bench.retrieval                    # 100,000 passages, 200 questions
    python -m bench.retrieval --passages 1000000 --queries 500

Documents of made-up prose (a 5,000-word vocabulary drawn with Zipf-like frequencies, as words in text are) are
cut into passages and indexed by llm.retrieval.index (SQLite FTS5, BM25) on one core, as ingestion does; then
questions of 3 to 8 words, some of them holding a rare word of one passage, are searched for the best 4. Prints
the build time, the index's size, and the median, 90th and 99th percentile query times; the figures go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from llm import provenance
from llm.data.document import Document
from llm.retrieval.index import Index

SYLLABLES = ["ka", "lo", "mi", "ra", "tu", "ve", "zo", "pe", "ni", "sa", "do", "gu", "bre", "tal", "qui", "fen", "or"]


def vocabulary(n: int, rng: np.random.Generator) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < n:
        words["".join(rng.choice(SYLLABLES, rng.integers(1, 4)))] = None
    return list(words)


def documents(n_passages: int, rng: np.random.Generator, words: list[str]) -> list[Document]:
    """Documents of 10 paragraphs of 60-100 words: about one passage a paragraph."""
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    n_docs = -(-n_passages // 10)
    lengths = rng.integers(60, 100, (n_docs, 10))
    drawn = iter(rng.choice(len(words), int(lengths.sum()), p=p).tolist())  # one draw for every word
    docs = []
    for d in range(n_docs):
        paragraphs = [" ".join(words[next(drawn)] for _ in range(n)) + "." for n in lengths[d]]
        docs.append(Document(f"bench/doc{d}.txt", "text", "\n\n".join(paragraphs), f"key{d}"))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core, as the server's request thread has
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rng = np.random.default_rng(args.seed)
    words = vocabulary(5000, rng)
    start = time.perf_counter()
    docs = documents(args.passages, rng, words)
    made = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.sqlite"
        start = time.perf_counter()
        with Index(path, create=True) as index:
            counts = index.update(docs)
        built = time.perf_counter() - start
        size = path.stat().st_size
        questions = []
        for _ in range(args.queries):
            question = list(rng.choice(words, rng.integers(3, 9)))
            if rng.random() < 0.5:  # a word of one passage, as a question naming a thing does
                question.append(str(rng.choice(words[-1000:])))
            questions.append("What is " + " ".join(question) + "?")
        times = []
        hits = 0
        with Index(path) as index:
            index.search(questions[0], args.k)  # the first query reads the index's pages in
            for q in questions:
                t = time.perf_counter()
                hits += bool(index.search(q, args.k))
                times.append(time.perf_counter() - t)
    ms = sorted(1000 * t for t in times)
    print(f"{provenance.hardware()}, one core; {time.strftime('%Y-%m-%d')}, {provenance.describe()}")
    print(f"documents made in {made:.1f} s: {len(docs):,} documents, {counts['passages']:,} passages")
    print(f"index built in {built:.1f} s ({counts['passages'] / built:,.0f} passages/s), {size / 2**20:,.1f} MiB")
    print(
        f"{len(ms)} questions, best {args.k}: median {statistics.median(ms):.2f} ms, "
        f"p90 {ms[int(0.9 * len(ms))]:.2f} ms, p99 {ms[min(len(ms) - 1, int(0.99 * len(ms)))]:.2f} ms, "
        f"{hits} with hits"
    )


if __name__ == "__main__":
    main()
