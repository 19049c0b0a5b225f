"""Generation throughput: our sampler with and without its KV cache, and Hugging Face GPT-2 `generate()`.

Same shapes, random weights, greedy, no early stop, one run:

    python -m bench.generate_throughput                      # CPU: small preset, batch 1 and 8, 512 new tokens
    python -m bench.generate_throughput --preset gpt2-124m --batch 1 32 --dtype bfloat16   # GPU
    python -m bench.generate_throughput --dtype float32 bfloat16 --compile both   # every setting: best vs best

Tokens/s counts new tokens of all rows (aggregate), prefill included. With several dtypes and modes the last
lines compare each side's fastest setting at each batch size (ours: dtype and eager or compiled; Hugging Face:
dtype, and with compiling, its eager dynamic cache or its static cache with the forward compiled), all measured
in this one run. Needs `pip install transformers` (the `bench` extra) for the Hugging
Face rows; they are skipped without it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from llm import provenance
from llm.config import model_preset
from llm.model import GPT, GPTConfig
from llm.sampler import DTYPES, SamplingParams, generate_ids

REPO = Path(__file__).resolve().parent.parent

log = logging.getLogger(__name__)


def hf_gpt2(config: GPTConfig, device: torch.device, dtype: torch.dtype):
    """Hugging Face GPT-2 of the same size (layers, width, heads, vocabulary, context), random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(hf_config).to(device=device, dtype=dtype).eval()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="a file of conf/model/ (small, gpt2-124m, tiny)")
    parser.add_argument("--block-size", type=int, default=1024, help="context; the small preset's 256 holds no 512")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=["auto"], nargs="+", choices=["auto", *DTYPES], help="one or several")
    parser.add_argument(
        "--compile", default="auto", choices=["auto", "true", "false", "both"], help="decode step; auto: on CUDA only"
    )
    parser.add_argument("--no-cache-batches", type=int, nargs="*", default=[1], help="batches to run without cache")
    parser.add_argument("--no-cache-tokens", type=int, default=None, help="new tokens without cache (default: same)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the fastest counts")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--plot", metavar="NAME", help="also draw the table as docs/images/NAME.png (tools.plots)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtypes = [DTYPES.get(d) or (torch.bfloat16 if device.type == "cuda" else torch.float32) for d in args.dtype]
    choice = ("true" if device.type == "cuda" else "false") if args.compile == "auto" else args.compile
    variants = {"true": ["compiled"], "false": [None], "both": [None, "compiled"]}[choice]
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":  # TF32 matmuls; on CPU "high" slows float32 matmuls several-fold
        torch.set_float32_matmul_precision("high")
    config = model_preset(args.preset, **({"block_size": args.block_size} if args.block_size else {}))
    greedy = SamplingParams.defaults(temperature=0)
    n_new = args.new_tokens
    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
        if not args.skip_hf:
            log.warning("transformers is not installed (pip install -e '.[bench]'): Hugging Face rows skipped")

    def prompts(batch: int) -> torch.Tensor:
        return torch.randint(1, config.vocab_size, (batch, args.prompt_len), generator=torch.Generator().manual_seed(1))

    log.info(
        "%s, torch %s, transformers %s, %s threads; %s (%d layers x %d, %d heads, vocab %d, context %d), %s, "
        "compile=%s",
        provenance.hardware(),
        torch.__version__,
        hf_version,
        torch.get_num_threads(),
        args.preset,
        config.n_layer,
        config.n_embd,
        config.n_head,
        config.vocab_size,
        config.block_size,
        ", ".join(str(d).removeprefix("torch.") for d in dtypes),
        args.compile,
    )
    rows: list[tuple[str, str, int, int, float]] = []  # (name, dtype, batch, new tokens, best seconds)
    for dtype in dtypes:
        dname = str(dtype).removeprefix("torch.")
        torch.manual_seed(0)
        model = GPT(config).to(device=device, dtype=dtype).eval()
        hf = hf_gpt2(config, device, dtype) if hf_version and not args.skip_hf else None

        def ours(batch: int, kv_cache: bool | str, tokens: int, model=model) -> Callable[[], object]:
            ids = prompts(batch).tolist()
            kwargs = dict(kv_cache=bool(kv_cache), compile=kv_cache == "compiled", sync_every=64)
            return lambda: generate_ids(model, ids, tokens, greedy, **kwargs)

        hf_compiled = None
        if hf is not None and "compiled" in variants:
            # Hugging Face's documented fast path: a static cache and the model's forward compiled
            hf_compiled = hf_gpt2(config, device, dtype)
            mode = "reduce-overhead" if device.type == "cuda" else "default"
            hf_compiled.forward = torch.compile(hf_compiled.forward, mode=mode, fullgraph=True)

        def theirs(batch: int, cache: bool | str, tokens: int, hf=hf, hf_compiled=hf_compiled) -> Callable[[], object]:
            ids = prompts(batch).to(device)
            mask = torch.ones_like(ids)
            kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, use_cache=bool(cache))
            if cache == "compiled":
                hf, kwargs = hf_compiled, {**kwargs, "cache_implementation": "static"}
            return lambda: hf.generate(ids, attention_mask=mask, pad_token_id=0, eos_token_id=None, **kwargs)

        with torch.inference_mode():
            for batch in args.batch:
                runs = [
                    ("ours, KV cache, compiled" if c else "ours, KV cache", ours, c or True, n_new) for c in variants
                ]
                if batch in args.no_cache_batches:
                    runs.append(("ours, no cache", ours, False, args.no_cache_tokens or n_new))
                if hf is not None:
                    runs.append(("HF generate(), cache", theirs, True, n_new))
                if hf_compiled is not None:
                    runs.append(("HF generate(), static cache, compiled", theirs, "compiled", n_new))
                for _, make, cached, tokens in runs:
                    warm = tokens if cached == "compiled" else min(tokens, 32)  # compiled: the same shapes as timed
                    make(batch, cached, warm)()  # warm up (and compile)
                    if cached == "compiled":
                        make(batch, cached, warm)()  # CUDA graphs record on a later call
                best = {name: float("inf") for name, *_ in runs}
                for repeat in range(args.repeats):  # interleaved, best of: a busy machine slows every run alike
                    for name, make, cached, tokens in runs:
                        if cached is False and repeat:  # the slow baseline runs once
                            continue
                        best[name] = min(best[name], timed(make(batch, cached, tokens), device))
                for name, _, _, tokens in runs:
                    rows.append((name, dname, batch, tokens, best[name]))
                    log.info("%-24s %-8s batch %3d: %9.1f tokens/s", name, dname, batch, batch * tokens / best[name])
        model.clear_caches()
        del model, hf, hf_compiled

    speed = {(name, d, batch): batch * tokens / s for name, d, batch, tokens, s in rows}
    length = {(name, d, batch): tokens for name, d, batch, tokens, _ in rows}
    out = ["| run | dtype | batch | new tokens | tokens/s |", "| --- | --- | ---: | ---: | ---: |"]
    for name, d, b, t, s in rows:
        out.append(f"| {name} | {d} | {b} | {t} | {b * t / s:,.{1 if b * t / s >= 10 else 2}f} |")
    out.append("")
    for d in dict.fromkeys(d for _, d, *_ in rows):
        for batch in args.batch:
            for ours_name in ("ours, KV cache", "ours, KV cache, compiled"):
                for other in ("ours, no cache", "HF generate(), cache", "HF generate(), static cache, compiled"):
                    if (ours_name, d, batch) in speed and (other, d, batch) in speed:
                        ratio = speed[(ours_name, d, batch)] / speed[(other, d, batch)]
                        a, b = length[(ours_name, d, batch)], length[(other, d, batch)]
                        # without a cache each token costs more than the last: a shorter run flatters it
                        note = f" (over {a} vs {b} new tokens: a lower bound)" if a != b else ""
                        out.append(f"{d}, batch {batch}: {ours_name} / {other} = {ratio:.1f}x{note}")
    if hf_version and not args.skip_hf:
        out.append("")
        for batch in args.batch:  # each side at its fastest setting measured here
            mine = [(v, n, d) for (n, d, b), v in speed.items() if b == batch and n.startswith("ours, KV")]
            hf_rows = [(v, n, d) for (n, d, b), v in speed.items() if b == batch and n.startswith("HF")]
            if mine and hf_rows:
                (v1, n1, d1), (v2, n2, d2) = max(mine), max(hf_rows)
                out.append(
                    f"best vs best, batch {batch}: {n1} {d1} {v1:,.1f} / {n2} {d2} {v2:,.1f} "
                    f"(transformers {hf_version}) = {v1 / v2:.2f}x"
                )
    sys.stdout.write("\n".join(out) + "\n")
    if args.plot:
        from tools.plots import plot_bench

        where = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        )
        c = config
        title = (
            f"Generation: {args.preset} preset ({c.n_layer} layers x {c.n_embd}, vocab {c.vocab_size}) | "
            f"{', '.join(str(d).removeprefix('torch.') for d in dtypes)}, {args.new_tokens} new tokens, greedy, "
            f"random weights | {where}, torch {torch.__version__}"
        )
        bars = [{"label": f"{name}, {d}, batch {b}", "tokens_per_sec": b * t / sec} for name, d, b, t, sec in rows]
        command = " ".join(["python -m bench.generate_throughput", *sys.argv[1:]])
        sys.stdout.write(f"figure: {plot_bench(bars, name=args.plot, title=title, command=command)}\n")


if __name__ == "__main__":
    main()
