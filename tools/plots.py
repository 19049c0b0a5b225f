"""Figures from a training run: loss, learning rate, throughput, attention heatmaps.

    python -m tools.plots RUN_DIR [--out docs/images] [--name NAME] [--hardware "..."]

Reads RUN_DIR/csv/metrics.csv, RUN_DIR/config.yaml, RUN_DIR/train.log and RUN_DIR/checkpoints/last.ckpt;
writes NAME-loss.png (with a bits-per-byte panel when the run logged val/bpb), NAME-lr.png,
NAME-throughput.png and NAME-attention.png, each with a caption (corpus, preset, steps, hardware) in its
title and in NAME-*.txt beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
import textwrap
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from llm import provenance  # noqa: E402
from llm.checkpoint import find_checkpoint, load_checkpoint  # noqa: E402
from llm.data.discover import DEFAULT_EXCLUDE  # noqa: E402

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "docs" / "images"
ATTENTION_TEXT = "def hello(name):\n    return 'Hello ' + name\n"
DPI = 100


def read_metrics(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} from the CSVLogger file; empty cells are skipped."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(Path(run_dir) / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def wall_time(run_dir: Path) -> float | None:
    """Seconds between the first and last timestamped line of RUN_DIR/train.log."""
    path = run_dir / "train.log"
    if not path.is_file():
        return None
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]", path.read_text(), re.M)
    if len(stamps) < 2:
        return None
    first, last = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def describe(run_dir: str | Path, series: dict, hw: str | None = None) -> dict[str, str]:
    """Caption parts from the run's resolved config.yaml and log."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    paths = [Path(p) for p in cfg.data.paths]
    builtin = [REPO_ROOT / "docs", REPO_ROOT / "llm", REPO_ROOT / "data" / "sample"]
    if paths == builtin:
        corpus = "built-in corpus (docs/, llm/, data/sample/)"
    elif len(paths) == 1 and paths[0].name.startswith("python3"):
        corpus = f"Python {paths[0].name.removeprefix('python')} standard library"
    else:
        corpus = ", ".join(p.name for p in paths)
    extra = [e for e in cfg.data.get("exclude", ()) if e not in DEFAULT_EXCLUDE]
    if extra:
        corpus += f" without {', '.join(extra[:4])}{', …' if len(extra) > 4 else ''}"
    meta = _dataset_meta(run_dir)
    if meta:
        corpus += f", {meta['train_tokens']:,} training tokens"
    m = cfg.model.config
    preset_name = _preset_name(m)
    preset = f"{preset_name} preset, " if preset_name else ""
    preset += f"{m.n_layer} layers x {m.n_embd}, {m.n_head} heads ({m.n_kv_head} K/V), context {m.block_size}"
    steps = max((s for v in series.values() for s, _ in v), default=-1) + 1  # logged steps count from 0
    batch = cfg.data.batch_size * m.block_size * cfg.trainer.accumulate_grad_batches
    secs = wall_time(run_dir)
    wall = f", {secs / 60:.0f} min" if secs else ""
    return {
        "task": str(cfg.get("task_name", "train")),
        "corpus": corpus,
        "preset": preset,
        "steps": f"{steps} steps x {batch:,} tokens{wall}",
        "hardware": hw or provenance.hardware(),
        "command": command(run_dir),
        "provenance": run_provenance(run_dir),
    }


def command(run_dir: Path) -> str:
    """The command line that made the run, from Hydra's record of its overrides."""
    path = run_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(path)] if path.is_file() else []
    quoted = [o if re.fullmatch(r"[\w.,=/:+-]*", o) else f"'{o}'" for o in overrides]
    return " ".join(["python train.py", *quoted])


def run_provenance(run_dir: Path) -> str:
    """ "2026-12-06, commit abc1234, python ..., torch ..., lightning ...": the run's date and its `code:` log line
    (this checkout's commit and versions when the log has none)."""
    log_text = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else ""
    day = re.search(r"^\[(\d{4}-\d\d-\d\d) ", log_text, re.M)
    code = re.search(r"\] - code: (.+)$", log_text, re.M)
    date = day.group(1) if day else f"{datetime.now():%Y-%m-%d}"
    return f"{date}, {code.group(1) if code else provenance.describe()}"


def _preset_name(model_config) -> str | None:
    """The conf/model/*.yaml preset whose config equals the run's, if any."""
    run = {k: v for k, v in OmegaConf.to_container(model_config).items() if k != "_target_"}
    for path in sorted((REPO_ROOT / "conf" / "model").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path).config)
        if all(run.get(k) == v for k, v in node.items() if k != "_target_"):
            return path.stem
    return None


def _dataset_meta(run_dir: Path) -> dict | None:
    pointer = run_dir / "data" / "dataset.json"
    try:
        folder = Path(json.loads(pointer.read_text())["folder"])
        return json.loads((folder / "meta.json").read_text())
    except (OSError, KeyError, ValueError):
        return None


def caption(info: dict[str, str]) -> str:
    parts = [
        info["corpus"],
        info["preset"],
        info["steps"],
        info["hardware"],
        info.get("command"),
        info.get("provenance"),
    ]
    return " | ".join(p for p in parts if p)


def _save(fig, out: Path, name: str, what: str, info: dict[str, str]) -> Path:
    text = f"{what}. {caption(info)}"
    fig.suptitle("\n".join([*textwrap.wrap(what, 100), *_wrap(caption(info), 100)]), fontsize=8)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    (out / f"{name}.txt").write_text(text + "\n")
    log.info("wrote %s", path)
    return path


def _wrap(text: str, width: int) -> list[str]:
    """Caption parts ("a | b | c") joined into lines of at most `width` characters, breaking only at " | "."""
    lines: list[str] = []
    line = ""
    for part in text.split(" | "):
        if line and len(line) + len(part) + 3 > width:
            lines.append(line)
            line = part
        else:
            line = f"{line} | {part}" if line else part
    return [*lines, line]


def plot_loss(series: dict, out: Path, name: str, info: dict[str, str]) -> Path:
    """Loss per token; below it val/bpb (bits per byte) when the run logged it."""
    bpb = "val/bpb" in series
    if bpb:
        fig, (ax, ax_bpb) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, layout="constrained")
    else:
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for key, style in (("train/loss", {"alpha": 0.8, "lw": 1}), ("val/loss", {"marker": "o", "lw": 2})):
        if key in series:
            steps, values = zip(*series[key], strict=True)
            ax.plot(steps, values, label=key, **style)
    ax.set(ylabel="cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if "val/ppl" in series:
        step, ppl = series["val/ppl"][-1]
        ax.annotate(f"val/ppl {ppl:.1f} at step {step}", xy=(0.98, 0.9), xycoords="axes fraction", ha="right")
    what = "Training and validation loss"
    if bpb:
        steps, values = zip(*series["val/bpb"], strict=True)
        ax_bpb.plot(steps, values, label="val/bpb", marker="o", lw=2, color="C2")
        ax_bpb.set(ylabel="bits per byte")
        ax_bpb.grid(alpha=0.3)
        ax_bpb.legend()
        ax_bpb.annotate(
            f"val/bpb {values[-1]:.3f} at step {steps[-1]}", xy=(0.98, 0.9), xycoords="axes fraction", ha="right"
        )
        what += "; validation bits per byte (comparable across tokenizers)"
        ax = ax_bpb
    ax.set(xlabel="optimizer step")
    return _save(fig, out, f"{name}-loss", what, info)


def plot_lr(series: dict, out: Path, name: str, info: dict[str, str]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
    for key, label in (("lr", "lr (AdamW: embeddings, gains)"), ("lr_muon", "lr_muon (Muon: hidden matrices)")):
        if key in series:
            steps, values = zip(*series[key], strict=True)
            ax.plot(steps, values, label=label)
    ax.set(xlabel="optimizer step", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out, f"{name}-lr", "Learning rate: linear warmup, cosine decay (warmup_cosine)", info)


def plot_throughput(series: dict, out: Path, name: str, info: dict[str, str]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
    steps, values = zip(*series["train/tokens_per_sec"], strict=True)
    ax.plot(steps, values, marker=".")
    ax.set(xlabel="optimizer step", ylabel="training tokens / s", ylim=(0, None))
    ax.grid(alpha=0.3)
    return _save(fig, out, f"{name}-throughput", "Throughput (train/tokens_per_sec)", info)


def plot_attention(
    ckpt: str | Path,
    out: Path,
    name: str,
    info: dict[str, str],
    text: str = ATTENTION_TEXT,
    max_heads: int = 4,
) -> Path:
    """Heatmaps of the first and last layer's heads on a short text (row: query token, column: key)."""
    model, tok, _ = load_checkpoint(ckpt)
    enc = tok.encode(text)
    ids = enc.ids[: model.config.block_size]
    labels = [t.replace("Ġ", "·").replace("Ċ", "\\n") for t in enc.tokens[: len(ids)]]
    with torch.no_grad():
        maps = [w[0].float().cpu() for w in model.attention_weights(torch.tensor([ids]))]  # (n_head, T, T) each
    layers = sorted({0, len(maps) - 1})
    heads = min(max_heads, model.config.n_head)
    size = max(2.6, 0.22 * len(ids))
    figsize = (size * heads, size * len(layers) + 1.0)
    fig, axes = plt.subplots(len(layers), heads, figsize=figsize, squeeze=False, layout="constrained")
    for r, layer in enumerate(layers):
        for h in range(heads):
            ax = axes[r][h]
            ax.imshow(maps[layer][h].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {h}", fontsize=8)
            ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(ids)), labels, fontsize=6)
    what = f"Attention weights of the trained model on {text!r} (row: query token, column: key; · is a space)"
    return _save(fig, out, f"{name}-attention", what, info)


def plot_run(
    run_dir: str | Path,
    out: str | Path = DEFAULT_OUT,
    name: str | None = None,
    hw: str | None = None,
) -> list[Path]:
    """Every figure for one run; returns the PNG paths."""
    run_dir = Path(run_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    series = read_metrics(run_dir)
    info = describe(run_dir, series, hw)
    name = name or info["task"]
    paths = [plot_loss(series, out, name, info)]
    if "lr" in series:
        paths.append(plot_lr(series, out, name, info))
    if "train/tokens_per_sec" in series:
        paths.append(plot_throughput(series, out, name, info))
    try:
        ckpt = find_checkpoint(run_dir, run_dir)
    except FileNotFoundError:
        log.warning("no checkpoint in %s: no attention heatmap", run_dir)
    else:
        paths.append(plot_attention(ckpt, out, name, info))
    return paths


def plot_bench(
    results: Sequence[dict],
    out: str | Path = DEFAULT_OUT,
    name: str = "kv-cache",
    title: str = "",
    command: str = "",
) -> Path:
    """Hook for benchmark scripts: rows of {"label", "tokens_per_sec"} as a bar chart, with NAME.txt beside it:
    the title, the command that measured it, the date, the commit and the versions."""
    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    bars = ax.barh([r["label"] for r in results], [r["tokens_per_sec"] for r in results])
    ax.bar_label(bars, fmt="%.1f", padding=3, fontsize=8)
    ax.set(xlabel="tokens / s")
    ax.margins(x=0.12)
    ax.grid(alpha=0.3, axis="x")
    made = f"{datetime.now():%Y-%m-%d}, {provenance.describe()}"
    fig.suptitle("\n".join(_wrap(f"{title} | {made}", 100)), fontsize=8)
    path = Path(out) / f"{name}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    (Path(out) / f"{name}.txt").write_text(" | ".join(p for p in (title, command, made) if p) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plots", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a training run folder, e.g. outputs/train/2026-01-01_12-00-00")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where the PNGs go (default: docs/images)")
    parser.add_argument("--name", help="file name prefix (default: the run's task_name)")
    parser.add_argument("--hardware", help="what the run trained on (default: this machine)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in plot_run(args.run_dir, args.out, args.name, args.hardware):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
