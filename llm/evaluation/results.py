"""Where scores go: eval/results.json in lm-eval's own format, eval/samples_<task>.jsonl when asked, and the
run's loggers (a row of metrics.csv, TensorBoard scalars, the wandb run's summary), each metric named
`eval/<task>/<metric>` (a filter other than lm-eval's `none` is added as `<metric>@<filter>`)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

from llm.atomic import write_text

log = logging.getLogger(__name__)

RESULTS = "results.json"
COUNTS = ("sample_len",)  # lm-eval's count of documents, beside the scores: not a score
PER_TASK = ("results", "versions", "n-shot", "higher_is_better", "n-samples", "configs")  # keyed by task name


def _json_default(o: object) -> object:
    """lm-eval's own fallback for what json cannot write (numpy scalars, sets, functions as text)."""
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, set):
        return sorted(o)
    return str(o)


def write_results(folder: Path, results: dict, model_key: dict) -> dict:
    """results (lm-eval's dict, without "samples") into folder/results.json. The tasks of an earlier evaluation of
    the same checkpoint at the same step that this one did not run are kept beside the new ones. Returns what was
    written."""
    path = folder / RESULTS
    results = {k: v for k, v in results.items() if k != "samples"}
    results["config"] = {**results.get("config", {}), **model_key}
    if path.is_file():
        old = json.loads(path.read_text())
        if all(old.get("config", {}).get(k) == v for k, v in model_key.items()):
            for section in PER_TASK:
                results[section] = {**old.get(section, {}), **results.get(section, {})}
    write_text(path, json.dumps(results, indent=2, default=_json_default, ensure_ascii=False) + "\n")
    return results


def write_samples(folder: Path, samples: Mapping[str, list]) -> list[Path]:
    """lm-eval's per-document records (--log_samples), one JSONL file per task."""
    written = []
    for task, rows in samples.items():
        path = folder / f"samples_{task}.jsonl"
        text = "".join(json.dumps(row, default=_json_default, ensure_ascii=False) + "\n" for row in rows)
        write_text(path, text)
        written.append(path)
    return written


def flat_metrics(results: Mapping) -> dict[str, float]:
    """`eval/<task>/<metric>` -> value for every numeric score of results["results"] (stderr included)."""
    flat = {}
    for task, scores in results.get("results", {}).items():
        for key, value in scores.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            metric, _, filt = key.partition(",")
            if metric in COUNTS:
                continue
            name = metric if filt in ("", "none") else f"{metric}@{filt}"
            flat[f"eval/{task}/{name}"] = float(value)
    return flat


def append_csv(path: Path, metrics: Mapping[str, float], step: int) -> None:
    """metrics into the run's metrics.csv at `step`: into the last row of that step when it has none of these
    columns yet (an evaluation at the step of a validation), else a row of their own; new columns are added."""
    rows: list[dict] = []
    fields: list[str] = []
    if path.is_file():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = list(reader.fieldnames or []), list(reader)
    fields += [k for k in ["step", *metrics] if k not in fields]
    same = [r for r in rows if r.get("step") and int(float(r["step"])) == step]
    if same and not any(same[-1].get(k) for k in metrics):
        same[-1].update({k: str(v) for k, v in metrics.items()})
    else:
        rows.append({"step": str(step), **{k: str(v) for k, v in metrics.items()}})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, out.getvalue())


def log_to_run(run: Path, run_config: Mapping | None, metrics: Mapping[str, float], step: int, wandb_id: str | None):
    """After `python -m llm.evaluate`: the scores to the loggers the run had (conf/logger/*.yaml's names)."""
    loggers = set((run_config or {}).get("logger") or {})
    if "csv" in loggers or (run / "csv" / "metrics.csv").is_file():
        append_csv(run / "csv" / "metrics.csv", metrics, step)
    if "tensorboard" in loggers:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run / "tensorboard")) as writer:
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)
    if "wandb" in loggers and wandb_id:
        import os

        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        project = (run_config or {}).get("logger", {}).get("wandb", {}).get("project", "llm")
        with wandb.init(id=wandb_id, resume="allow", dir=str(run), project=project) as experiment:
            experiment.summary.update(dict(metrics))
    log.info("logged %d scores at step %d to the run's loggers (%s)", len(metrics), step, ", ".join(sorted(loggers)))


def log_to_trainer(trainer, metrics: Mapping[str, float], step: int) -> None:
    """During training: the scores to the trainer's own loggers, and to the wandb run's summary."""
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)
        summary = getattr(getattr(logger, "experiment", None), "summary", None)
        if type(logger).__name__ == "WandbLogger" and summary is not None:
            summary.update(dict(metrics))


def table(results: Mapping) -> str:
    """A markdown table of every task's scores with their stderr: what the CLI prints and report.md shows."""
    lines = ["| task | metric | value | stderr |", "| --- | --- | --- | --- |"]
    for task, scores in sorted(results.get("results", {}).items()):
        for key, value in scores.items():
            metric, _, filt = key.partition(",")
            if (
                metric.endswith("_stderr")
                or metric in COUNTS
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
            ):
                continue
            stderr = scores.get(f"{metric}_stderr,{filt}")
            err = f"{stderr:.4f}" if isinstance(stderr, (int, float)) and math.isfinite(stderr) else "—"
            name = metric if filt in ("", "none") else f"{metric} ({filt})"
            shown = f"{value:,}" if isinstance(value, int) else f"{value:.4f}"
            lines.append(f"| {task} | {name} | {shown} | {err} |")
    return "\n".join(lines)
