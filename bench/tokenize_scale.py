"""The tokenizer and token files of a generated corpus of a gigabyte or more, with the peak memory and the time.

    python -m bench.tokenize_scale [--gb 1.0] [--files 256] [--vocab 8192] [--keep DIR]

The corpus: --files text files of Zipf-distributed synthetic words (8,000 of them, 2-12 letters) in lines of
8-16 words. The run is TextDataModule.prepare_data, as training does it: ingest (worker processes), split,
BPE on a sample of at most data.tokenizer_sample_mb (conf/data/default.yaml), train.bin / val.bin written
streamed. Peak memory: ru_maxrss of this process and of its waited-for children, and the peak of the summed
resident memory of the whole process tree (the ingest workers included), polled from /proc every 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from llm.config import config_dir
from llm.data.datamodule import TextDataModule


def generate(folder: Path, total_bytes: int, files: int, seed: int = 0) -> int:
    """Write the corpus; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    lengths = rng.integers(2, 13, size=8_000)
    vocab = np.array(["".join(rng.choice(letters, size=n)) for n in lengths])
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    folder.mkdir(parents=True)
    per_file, written = total_bytes // files, 0
    for i in range(files):
        words = vocab[rng.choice(len(vocab), size=per_file // 6, p=p)].tolist()
        cuts = np.cumsum(rng.integers(8, 17, size=len(words) // 8 + 1))
        lines, start = [], 0
        for end in cuts:
            lines.append(" ".join(words[start:end]))
            start = end
            if start >= len(words):
                break
        data = ("\n".join(lines) + "\n").encode()
        (folder / f"part-{i:04d}.txt").write_bytes(data)
        written += len(data)
    return written


def tree_rss_kb(root: int) -> int:
    """Summed resident memory (kB) of root and its descendants, from /proc."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry)] = int(fields["PPid"])
        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        total += rss.get(pid, 0)
        frontier += [c for c, pp in parents.items() if pp == pid]
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0, help="corpus size in GB (2**30 bytes)")
    p.add_argument("--files", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192, help="data.vocab_size")
    p.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temporary folder)")
    args = p.parse_args()
    data = OmegaConf.load(config_dir() / "data" / "default.yaml")
    root = args.keep or Path(tempfile.mkdtemp(prefix="tokenize-scale-"))
    try:
        start = time.perf_counter()
        size = generate(root / "corpus", int(args.gb * 2**30), args.files)
        generated = time.perf_counter() - start
        peak = [0]
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], tree_rss_kb(os.getpid()))

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        dm = TextDataModule(
            paths=str(root / "corpus"),
            out_dir=str(root / "out"),
            cache_dir=str(root / "cache"),
            vocab_size=args.vocab,
            tokenizer_sample_mb=data.tokenizer_sample_mb,
            block_size=256,
            batch_size=8,
            val_fraction=0.01,
            seed=0,
            align="none",
            val_windows=32,
            num_workers=0,
            ingest={},
        )
        start = time.perf_counter()
        dm.prepare_data()
        seconds = time.perf_counter() - start
        done.set()
        watcher.join()
        dm.setup()
        tokens = dm.meta["train_tokens"] + dm.meta["val_tokens"]
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"corpus: {args.files} files, {size / 2**30:.2f} GB (generated in {generated:.0f} s), {os.cpu_count()} cores")
    print(
        f"tokenizer: vocab {dm.meta['vocab_size']}, BPE sample {data.tokenizer_sample_mb} MB (data.tokenizer_sample_mb)"
    )
    print(f"tokens: {tokens:,} ({dm.meta['dtype']}), {size / tokens:.2f} bytes per token")
    print(f"prepare_data (ingest + BPE + token files): {seconds:.0f} s, {size / 2**20 / seconds:.1f} MB/s")
    print(
        f"peak memory: this process {own:.2f} GB, largest child {children:.2f} GB, whole tree {peak[0] / 2**20:.2f} GB"
    )


if __name__ == "__main__":
    main()
