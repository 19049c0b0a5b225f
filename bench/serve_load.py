"""Load on a live server: many concurrent clients, each sending requests one after another.

    python -m bench.serve_load                                 # 32 clients x 20 requests, then concurrency 1 vs 8
    python -m bench.serve_load --ckpt outputs/train/<run>/checkpoints/last.ckpt --clients 8 --requests 5
    python -m bench.serve_load --compile true                  # the compiled decode step (compiles first)

Starts `python serve.py` on a free port of 127.0.0.1 (a random-weights model of --preset with a tokenizer trained
on docs/ unless --ckpt is given), then prints for each load: requests failed, latency p50 / p99 (seconds from
sending a request to its whole answer), and aggregate tokens/s (new tokens of every answer / wall time). Last,
the same requests at concurrency 1 and 8 and the ratio of their tokens/s: what continuous batching buys.
Every request asks for --max-tokens new tokens (temperature 0.8, no stop string); usage.completion_tokens counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["def ", "The ", "import ", "class Model", "# Training", "A tokenizer", "for i in range(", "Attention is"]


def random_checkpoint(preset: str, block_size: int, folder: Path) -> Path:
    """A checkpoint of random weights, with a byte-level BPE trained on the docs (the shapes are what count)."""
    from llm.checkpoint import save_model
    from llm.config import model_preset
    from llm.model import GPT
    from llm.tokenizer import train_tokenizer

    texts = [p.read_text() for p in sorted((REPO / "docs").glob("*.md"))]
    tokenizer = train_tokenizer(texts, vocab_size=2048)
    config = model_preset(preset, vocab_size=tokenizer.get_vocab_size(), block_size=block_size)
    torch.manual_seed(0)
    model = GPT(config)
    return save_model(folder / "checkpoints" / "last.ckpt", model, tokenizer)


def start_server(
    ckpt: Path, max_batch: int, queue_size: int, threads: int, compile: str
) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, str(REPO / "serve.py"), f"ckpt_path={ckpt}", "port=0", f"max_batch={max_batch}"]
    command += [f"queue_size={queue_size}", "request_timeout=600", f"compile={compile}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if " on http://" in line:
            url = line.split(" on ")[1].split()[0]
            break
    else:
        raise SystemExit(f"the server did not start: exit {proc.wait()}")
    threading.Thread(target=lambda: [sys.stderr.write(line) for line in proc.stderr], daemon=True).start()  # drained
    deadline = time.monotonic() + 120
    while True:  # the socket is bound before the server listens on it
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server never answered /health") from None
        time.sleep(0.1)


@dataclass
class Load:
    clients: int
    requests: int
    failed: int
    latencies: list[float]
    tokens: int
    seconds: float

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


async def run_load(url: str, clients: int, requests: int, max_tokens: int) -> Load:
    latencies: list[float] = []
    counts = {"failed": 0, "tokens": 0}

    async def client(c: int, http: httpx.AsyncClient) -> None:
        for r in range(requests):
            body = {"model": "llm", "prompt": PROMPTS[(c + r) % len(PROMPTS)], "max_tokens": max_tokens}
            body |= {"temperature": 0.8, "seed": c * 1000 + r}
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/completions", json=body)
                response.raise_for_status()
                counts["tokens"] += response.json()["usage"]["completion_tokens"]
                latencies.append(time.perf_counter() - start)
            except httpx.HTTPError as e:
                counts["failed"] += 1
                print(f"client {c} request {r} failed: {e!r}", file=sys.stderr)

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        seconds = time.perf_counter() - start
    return Load(clients, requests, counts["failed"], latencies, counts["tokens"], seconds)


def report(load: Load) -> str:
    return (
        f"| {load.clients} | {load.requests} | {load.failed} | {load.percentile(0.5):.2f} | "
        f"{load.percentile(0.99):.2f} | {load.tokens:,} | {load.tokens_per_sec:,.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="a checkpoint to serve (default: random weights of --preset)")
    parser.add_argument("--preset", default="small", help="conf/model/ preset of the random model")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8, help="the server's max_batch")
    parser.add_argument("--compare", type=int, nargs=2, default=[1, 8], metavar=("LOW", "HIGH"))
    parser.add_argument("--compare-requests", type=int, default=8, help="requests per client of the comparison")
    parser.add_argument("--threads", type=int, default=0, help="the server's OMP_NUM_THREADS (0: torch's default)")
    parser.add_argument(
        "--compile", default="auto", choices=["auto", "true", "false"], help="the server's compile (auto: on CUDA)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or random_checkpoint(args.preset, args.block_size, Path(tmp))
        queue = max(64, 2 * args.clients)
        proc, url = start_server(ckpt, args.max_batch, queue, args.threads, args.compile)
        try:
            info = httpx.get(f"{url}/v1/models").json()["data"][0]
            print(
                f"server {url}: max_batch {args.max_batch}, context {info['context_length']}, "
                f"compile={args.compile}, torch {torch.__version__}"
            )
            asyncio.run(run_load(url, 2, 1, args.max_tokens))  # warm up
            header = [
                "| clients | requests each | failed | p50 latency (s) | p99 latency (s) | new tokens | tokens/s |",
                "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            full = asyncio.run(run_load(url, args.clients, args.requests, args.max_tokens))
            low, high = (asyncio.run(run_load(url, c, args.compare_requests, args.max_tokens)) for c in args.compare)
            print("\n".join([*header, report(full), report(low), report(high)]))
            print(f"failed: {full.failed + low.failed + high.failed}")
            ratio = high.tokens_per_sec / low.tokens_per_sec
            print(f"aggregate tokens/s at concurrency {high.clients} / concurrency {low.clients} = {ratio:.1f}x")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
