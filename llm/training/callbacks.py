"""Callbacks: throughput and progress that is readable in a terminal and in a log file alike."""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

log = logging.getLogger("llm.train")


class Throughput(L.Callback):
    """Logs train/tokens_per_sec every `every_n_steps` optimizer steps (values read only then: no host sync)."""

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = every_n_steps
        self._t0: float | None = None
        self._tokens = 0
        self._last_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += batch[0].numel() * trainer.world_size
        if self._t0 is None:  # the first batch pays for start-up (and compilation): leave it out
            self._t0, self._tokens = time.perf_counter(), 0
            return
        step = trainer.global_step  # counts optimizer steps: unchanged while gradients accumulate
        if step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        elapsed = time.perf_counter() - self._t0
        pl_module.log("train/tokens_per_sec", self._tokens / elapsed, rank_zero_only=True)
        self._t0, self._tokens = time.perf_counter(), 0


class PlainProgress(ProgressBar):
    """One log line every `every_n_steps` optimizer steps: for output that is not a terminal."""

    def __init__(self, every_n_steps: int = 25) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._start = 0.0
        self._last_step = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._enabled or step == self._last_step or (step % self.every_n_steps and step != trainer.max_steps):
            return
        self._last_step = step
        m = trainer.callback_metrics
        parts = [f"step {step}" + (f"/{trainer.max_steps}" if trainer.max_steps > 0 else "")]
        for key, fmt in (("train/loss", "loss {:.4f}"), ("val/loss", "val/loss {:.4f}"),
                         ("train/tokens_per_sec", "{:,.0f} tok/s")):  # fmt: skip
            if key in m:
                parts.append(fmt.format(float(m[key])))
        if trainer.max_steps > 0 and step > 0:
            eta = (time.perf_counter() - self._start) / step * (trainer.max_steps - step)
            parts.append(f"ETA {eta // 60:.0f}m{eta % 60:02.0f}s")
        log.info(" | ".join(parts))

    def on_validation_end(self, trainer, pl_module) -> None:
        m = trainer.callback_metrics
        if self._enabled and not trainer.sanity_checking and "val/loss" in m:
            log.info("validation at step %d | val/loss %.4f | val/ppl %.2f", trainer.global_step,
                     float(m["val/loss"]), float(m.get("val/ppl", float("nan"))))  # fmt: skip


def progress_bar(every_n_steps: int = 25, refresh_rate: int = 1) -> ProgressBar:
    """A TQDM bar on a terminal, plain log lines otherwise (a Rich bar is unreadable in log files)."""
    if sys.stdout.isatty():
        return TQDMProgressBar(refresh_rate=refresh_rate)
    return PlainProgress(every_n_steps)
