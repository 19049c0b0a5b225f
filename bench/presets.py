"""What each model preset costs on this machine: `python train.py model=PRESET` for a few steps, as a user runs it.

    python -m bench.presets                                   # tiny, small, gpt2-124m on the built-in corpus
    python -m bench.presets --presets tiny small --steps 100 50

Each preset trains in a process of its own (`python train.py model=P`, the default recipe, validation and the
end-of-run evaluation off, so that only training is timed). Reports, per preset: parameters, tokens per step,
training tokens/s (the Throughput callback's `train/tokens_per_sec`, which leaves out the first step and
validations: the median of its readings), the time 100 optimizer steps take at that rate, and the peak resident
memory of the training process (getrusage's ru_maxrss: weights, gradients, optimizer state, activations and
torch itself). The startup (ingest, tokenizer, model build) is reported apart: a second run on the same corpus
reads it from the cache. Writes presets.md to --out.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from llm import provenance
from llm.config import model_preset

REPO_ROOT = Path(__file__).resolve().parent.parent
# steps each preset trains, and its micro-batch: gpt2-124m's step takes minutes on a CPU at batch 16
DEFAULTS = {"tiny": (100, 16), "small": (50, 16), "gpt2-124m": (4, 2)}


def run_preset(preset: str, steps: int, batch: int, out: Path) -> dict:
    """One `python train.py` in a child process; its metrics, wall time and peak memory."""
    root = out / preset
    argv = [
        sys.executable,
        "train.py",
        f"model={preset}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        f"data.batch_size={batch}",
        "callbacks.evaluate.tasks=[]",
        "callbacks.throughput.every_n_steps=1",
        "callbacks.last.every_n_train_steps=1000000",
        f"task_name=presets-{preset}",
        f"paths.outputs_root={root}",
    ]
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    stderr = child.stderr.read() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"model={preset}: train.py failed:\n{stderr[-3000:]}")
    metrics = next(root.glob(f"presets-{preset}/*/csv/metrics.csv"))
    with metrics.open(newline="") as f:
        rates = [float(r["train/tokens_per_sec"]) for r in csv.DictReader(f) if r.get("train/tokens_per_sec")]
    config = model_preset(preset)
    tokens = batch * config.block_size
    rate = statistics.median(rates)
    return {
        "preset": preset,
        "layout": f"{config.n_layer} x {config.n_embd}, context {config.block_size}",
        "steps": steps,
        "batch": f"{batch} x {config.block_size} = {tokens:,}",
        "tokens_per_sec": rate,
        "per_100_steps": 100 * tokens / rate,
        "wall": wall,
        "peak_gib": usage.ru_maxrss / 2**20,  # Linux: KiB
    }


def parameters(preset: str, out: Path) -> int:
    """The preset's parameter count as train.py logs it (the vocabulary is the corpus's, the size the preset's)."""
    log = next((out / preset).glob(f"presets-{preset}/*/train.log")).read_text()
    return int(log.split("model: ", 1)[1].split(" parameters", 1)[0].replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(DEFAULTS), help="conf/model presets")
    parser.add_argument("--steps", nargs="+", type=int, help="optimizer steps of each preset, in order")
    parser.add_argument("--batch", nargs="+", type=int, help="data.batch_size of each preset, in order")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "presets")
    args = parser.parse_args()
    steps = args.steps or [DEFAULTS.get(p, (20, 16))[0] for p in args.presets]
    batch = args.batch or [DEFAULTS.get(p, (20, 16))[1] for p in args.presets]
    if len(steps) != len(args.presets) or len(batch) != len(args.presets):
        raise SystemExit("--steps and --batch need one value per preset")
    out = args.out.resolve()
    rows = []
    for preset, n, b in zip(args.presets, steps, batch, strict=True):
        print(f"model={preset}: {n} steps at batch {b} ...", flush=True)
        row = run_preset(preset, n, b, out)
        row["params"] = parameters(preset, out)
        rows.append(row)
        print(f"  {row['tokens_per_sec']:,.0f} tok/s, peak {row['peak_gib']:.2f} GiB", flush=True)
    lines = [
        f"`python -m bench.presets`, {time.strftime('%Y-%m-%d')}, {provenance.describe()}; {provenance.hardware()}, "
        f"float32, load average at the end {os.getloadavg()[0]:.1f}",
        "",
        "| preset | layers x width | parameters | tokens per step | steps timed | training tokens/s | "
        "100 steps | peak memory | wall time of the run |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['layout']} | {r['params']:,} | {r['batch']} | {r['steps']} | "
            f"{r['tokens_per_sec']:,.0f} | {r['per_100_steps']:,.0f} s | {r['peak_gib']:.2f} GiB | {r['wall']:.0f} s |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "presets.md").write_text(table + "\n")
    print(f"\nwrote {out / 'presets.md'}")


if __name__ == "__main__":
    main()
