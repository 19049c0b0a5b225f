"""report.md: a run's report card, written at the end of training and after each evaluation, with loss.svg and
bpb.svg beside it.

Model (parameters, layout), data (documents, tokens, epochs seen), compute (time, tokens, tokens/s, hardware),
the final validation (val/loss, val/ppl, val/bpb from csv/metrics.csv), the task scores of eval/results.json with
their stderr, and a few greedy samples. Every figure is a row `| name | value |` of a table. What the run folder
does not hold (a checkpoint copied alone, a run without the CSV logger) is shown as `—`.

compute.json, written by the ReportCard callback (llm/evaluation/callbacks.py), keeps what only training knows:
seconds, tokens and optimizer steps trained (summed over resumes), the hardware and the precision.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

from tokenizers import Tokenizer

from llm.atomic import write_text
from llm.evaluation.results import RESULTS, table
from llm.model import GPT

log = logging.getLogger(__name__)

REPORT = "report.md"
COMPUTE = "compute.json"
FIGURES = {"loss": "loss.svg", "bpb": "bpb.svg"}
PROMPTS = ("def ", "The ")
MISSING = "—"


def read_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} of a metrics.csv; empty cells skipped; {} when there is none."""
    series: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return series
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("step"):
                continue
            step = int(float(row["step"]))
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    series.setdefault(key, []).append((step, float(value)))
    return series


def layout(model: GPT) -> str:
    c = model.config
    heads = f"{c.n_head} heads" + (f" ({c.n_kv_head} K/V)" if c.n_kv_head != c.n_head else "")
    parts = [f"{c.n_layer} layers × {c.n_embd}", heads, f"context {c.block_size}", f"vocab {c.vocab_size:,}"]
    parts += [c.pos, c.norm, c.mlp] + (["QK-norm"] if c.qk_norm else [])
    parts += ([f"value embeddings × {c.value_embeds}"] if c.value_embeds else []) + (
        ["U-net skips"] if c.unet_skips else []
    )
    parts += ["tied"] if c.tie_embeddings else []
    return ", ".join(parts)


def _count(n: float | None, unit: str = "") -> str:
    return MISSING if n is None else f"{n:,.0f}{unit}"


def data_rows(run: Path, tokens_trained: int | None) -> list[tuple[str, str]]:
    """Documents and tokens of the run's corpus (manifest.jsonl, and the token cache's meta.json when it is still
    there), and the epochs the tokens trained make."""
    manifest = run / "data" / "manifest.jsonl"
    meta: dict = {}
    pointer = run / "data" / "dataset.json"
    if pointer.is_file():
        meta_file = Path(json.loads(pointer.read_text())["folder"]) / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta:
        docs = f"{len(meta['train_docs']) + len(meta['val_docs']):,} ({len(meta['train_docs']):,} train / "
        docs += f"{len(meta['val_docs']):,} held out)"
    elif manifest.is_file():
        ok = sum(json.loads(line).get("status") == "ok" for line in manifest.read_text().splitlines() if line)
        docs = f"{ok:,}"
    else:
        docs = MISSING
    train, val = meta.get("train_tokens"), meta.get("val_tokens")
    tokens = f"{train:,} train / {val:,} held out" if meta else MISSING
    epochs = f"{tokens_trained / train:.2f}" if tokens_trained and train else MISSING
    return [("documents", docs), ("tokens", tokens), ("epochs seen", epochs)]


def compute_rows(compute: Mapping) -> list[tuple[str, str]]:
    seconds, tokens = compute.get("seconds"), compute.get("tokens")
    rate = tokens / seconds if seconds and tokens else None
    time = MISSING if seconds is None else f"{seconds:,.1f} s"
    return [
        ("time", time),
        ("optimizer steps", _count(compute.get("steps"))),
        ("tokens trained", _count(tokens)),
        ("tokens/s", _count(rate)),
        ("hardware", compute.get("hardware", MISSING)),
        ("precision", compute.get("precision", MISSING)),
    ]


def final_rows(series: Mapping[str, list[tuple[int, float]]], final: Mapping[str, float]) -> list[tuple[str, str]]:
    """The last val/loss, val/ppl, val/bpb (metrics.csv; `final`, the trainer's, when the run kept no CSV)."""
    rows = []
    for key in ("val/loss", "val/ppl", "val/bpb"):
        if series.get(key):
            _, value = series[key][-1]
            rows.append((key, f"{value:.4f}"))
        elif key in final:
            rows.append((key, f"{final[key]:.4f}"))
        else:
            rows.append((key, MISSING))
    return rows


def svg_chart(title: str, ylabel: str, lines: Mapping[str, Sequence[tuple[int, float]]]) -> str:
    """A line chart as SVG text: one polyline (with dots) per series, axes with their extremes. No plotting library:
    the runtime package draws its few figures itself (tools/plots.py draws the docs' with matplotlib)."""
    W, H, left, right, top, bottom = 640, 360, 70, 20, 40, 50
    points = [p for series in lines.values() for p in series]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)

    def at(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x0) / (x1 - x0) * (W - left - right)
        return x, top + (y1 - value) / (y1 - y0) * (H - top - bottom)

    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<line x1="{left}" y1="{H - bottom}" x2="{W - right}" y2="{H - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{H - bottom}" stroke="black"/>',
        f'<text x="{left}" y="{H - bottom + 16}" text-anchor="middle">{x0}</text>',
        f'<text x="{W - right}" y="{H - bottom + 16}" text-anchor="middle">{x1}</text>',
        f'<text x="{(left + W - right) / 2}" y="{H - 12}" text-anchor="middle">optimizer step</text>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{y1:.3g}</text>',
        f'<text x="{left - 6}" y="{H - bottom}" text-anchor="end">{y0:.3g}</text>',
        f'<text x="14" y="{(top + H - bottom) / 2}" transform="rotate(-90 14 {(top + H - bottom) / 2})"'
        f' text-anchor="middle">{escape(ylabel)}</text>',
    ]
    for k, (name, series) in enumerate(lines.items()):
        colour = colours[k % len(colours)]
        xy = [at(step, value) for step, value in series]
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            + '"/>'
        )
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y in xy]
        out.append(f'<text x="{W - right - 150}" y="{top + 16 * (k + 1)}" fill="{colour}">{escape(name)}</text>')
    return "\n".join([*out, "</svg>"]) + "\n"


def draw_figures(run: Path, series: Mapping[str, list[tuple[int, float]]]) -> list[str]:
    """loss.svg (train/loss, val/loss) and bpb.svg (val/bpb, and eval/bpb/bpb where evaluated) from metrics.csv."""
    drawn = []
    panels = {"loss": ("train/loss", "val/loss"), "bpb": ("val/bpb", "eval/bpb/bpb")}
    units = {"loss": "nats per token", "bpb": "bits per byte"}
    for name, keys in panels.items():
        present = {k: sorted(set(series[k])) for k in keys if series.get(k)}
        if present:
            write_text(run / FIGURES[name], svg_chart(f"{run.name}: {name}", units[name], present))
            drawn.append(name)
    return drawn


def samples(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str] = PROMPTS) -> list[tuple[str, str]]:
    """Greedy continuations of a few fixed prompts."""
    from llm.sampler import generate

    new = max(1, min(48, model.config.block_size - 16))
    was_training = model.training
    try:
        outs = generate(model, tokenizer, list(prompts), max_new_tokens=new, temperature=0, kv_cache=True)
    finally:
        model.train(was_training)
    return [(p, g.text) for p, g in zip(prompts, outs, strict=True)]


def _table(rows: Sequence[tuple[str, str]]) -> list[str]:
    return ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]


def write_report(
    run: Path,
    model: GPT,
    tokenizer: Tokenizer,
    checkpoint: str | None,
    step: int,
    final: Mapping[str, float] | None = None,
) -> Path:
    """run/report.md and its figures, from the run folder's files and the model (parameters, samples)."""
    series = read_series(run / "csv" / "metrics.csv")
    compute = json.loads((run / COMPUTE).read_text()) if (run / COMPUTE).is_file() else {}
    results = json.loads((run / "eval" / RESULTS).read_text()) if (run / "eval" / RESULTS).is_file() else {}
    written = datetime.now().isoformat(timespec="seconds")
    lines = [
        f"# Report card: {run.name}",
        "",
        f"Checkpoint `{checkpoint or MISSING}` at step {step:,}; written {written}.",
        "",
        "## Model",
        "",
        *_table([("parameters", f"{model.num_params():,}"), ("layout", layout(model))]),
        "## Data",
        "",
        *_table(data_rows(run, compute.get("tokens"))),
        "## Compute",
        "",
        *_table(compute_rows(compute)),
        "## Final validation",
        "",
        *_table(final_rows(series, final or {})),
        "## Tasks",
        "",
    ]
    if results.get("results"):
        where = f"step {results.get('config', {}).get('step', MISSING)}"
        lines += [f"From `eval/{RESULTS}` ({where}); `—`: the task gives no stderr.", "", table(results), ""]
        scored = results.get("configs", {}).get("bpb", {}).get("scored")
        if scored:
            kinds = ", ".join(
                f"{k.removeprefix('documents_')} {v}" for k, v in scored.items() if k.startswith("documents_")
            )
            lines += [
                f"bpb scored {scored['documents']:,} documents ({kinds}): {scored['tokens']:,} tokens, "
                f"{scored['bytes']:,} bytes, in {scored['windows']:,} windows of the model's context.",
                "",
            ]
    else:
        lines += ["None evaluated yet: `python -m llm.evaluate ckpt_path=RUN 'tasks=[bpb]'` (docs/evaluation.md).", ""]
    lines += ["## Samples", "", "Greedy, from fixed prompts:", ""]
    for prompt, text in samples(model, tokenizer):
        lines += ["```text", (prompt + text).replace("```", "'''"), "```", ""]
    drawn = draw_figures(run, series)
    lines += ["## Figures", ""]
    lines += [f"![{name}]({FIGURES[name]})" for name in drawn] or [
        "No metrics.csv: no figures (logger=csv draws them)."
    ]
    path = run / REPORT
    write_text(path, "\n".join(lines) + "\n")
    log.info("report card: %s", path)
    return path
