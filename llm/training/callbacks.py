"""Callbacks: throughput and progress that is readable in a terminal and in a log file alike."""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar

from llm.atomic import remove_stale_temps
from llm.training.flops import peak_flops

log = logging.getLogger(__name__)


def every(name: str, value: int) -> int:
    """An interval in steps: a whole number of at least 1, or an error that names it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a whole number of steps, at least 1")
    return value


class Throughput(L.Callback):
    """Every `every_n_steps` optimizer steps: tokens/s, MFU (where the GPU's peak is known), peak memory.

    Reads only host-side clocks and counters: no device synchronisation in the training loop. The time spent in
    validation is left out: tokens/s is the training rate, whatever `trainer.val_check_interval` is.
    """

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every("every_n_steps", every_n_steps)
        self._t0: float | None = None
        self._tokens = 0
        self._last_step = 0
        self._val_start: float | None = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._t0 is not None and self._val_start is not None:  # move the start past the validation
            self._t0 += time.perf_counter() - self._val_start
        self._val_start = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += batch["input"].numel() * trainer.world_size
        if self._t0 is None:  # the first batch pays for start-up (and compilation): leave it out
            self._t0, self._tokens = time.perf_counter(), 0
            return
        step = trainer.global_step  # counts optimizer steps: unchanged while gradients accumulate
        if step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        elapsed = time.perf_counter() - self._t0
        tokens_per_sec = self._tokens / elapsed
        metrics = {"train/tokens_per_sec": tokens_per_sec}
        peak = peak_flops(pl_module.device)
        if peak is not None:  # model FLOPs per token x tokens/s over the whole job's peak
            flops = pl_module.net.flops_per_token(batch["input"].shape[1]) * tokens_per_sec
            metrics["train/mfu"] = flops / (peak * trainer.world_size)
        if pl_module.device.type == "cuda":
            metrics["train/peak_memory_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        pl_module.log_dict(metrics, rank_zero_only=True)
        self._t0, self._tokens = time.perf_counter(), 0


class NonFiniteLossError(RuntimeError):
    pass


class StopOnNonFiniteLoss(L.Callback):
    """Stops training at a NaN/inf loss, before any checkpoint of the damaged weights is written.

    Reading a loss on the host waits for the GPU, so the training loop never does it step by step: each
    micro-batch keeps its loss on the device, and they are read together every `check_every_n_steps`
    optimizer steps, before every checkpoint save and when training ends. Every rank takes the same
    decision. Checkpoint callbacks run after all others in Lightning, and a save checks first, so the
    last checkpoint on disk stays the last good one.
    """

    def __init__(self, check_every_n_steps: int) -> None:
        self.check_every_n_steps = every("check_every_n_steps", check_every_n_steps)
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # (global step, batch, loss) not yet read
        self._checked_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        step = trainer.global_step  # after this micro-batch: counts optimizer steps
        self._pending.append((step, batch_idx, loss.detach()))
        if step % self.check_every_n_steps == 0 and step != self._checked_step:  # once per step, not per micro-batch
            self._checked_step = step
            self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check(trainer)  # raising here leaves the file unwritten

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer)

    def check(self, trainer) -> None:
        """One host sync for all pending losses; raises NonFiniteLossError at the first that is NaN or inf."""
        pending, self._pending = self._pending, []
        finite = torch.stack([torch.isfinite(loss).all() for *_, loss in pending]) if pending else None
        local = finite is not None and not bool(finite.all())
        if not trainer.strategy.reduce_boolean_decision(local, all=False):
            return
        good = last_checkpoint_path(trainer)
        what = "NaN or inf on another rank"
        if local:
            step, batch_idx, loss = pending[finite.tolist().index(False)]
            what = f"{float(loss)} at step {step} (batch {batch_idx})"
        raise NonFiniteLossError(
            f"loss became {what}: training stopped. "
            f"Last good checkpoint: {good or 'none yet'}. Try a lower optim.lr, a longer optim.warmup_steps, "
            "trainer.gradient_clip_val, or trainer.precision=bf16-mixed instead of 16-mixed."
        )


class PlainProgress(ProgressBar):
    """One log line every `every_n_steps` optimizer steps: for output that is not a terminal."""

    def __init__(self, every_n_steps: int) -> None:
        super().__init__()
        self.every_n_steps = every("every_n_steps", every_n_steps)
        self._enabled = True
        self._start, self._start_step = 0.0, 0
        self._last_step = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._start_step = time.perf_counter(), trainer.global_step  # a resumed run starts midway

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._enabled or step == self._last_step or (step % self.every_n_steps and step != trainer.max_steps):
            return
        self._last_step = step
        m = trainer.callback_metrics
        parts = [f"step {step}" + (f"/{trainer.max_steps}" if trainer.max_steps > 0 else "")]
        shown = {"train/loss": "loss {:.4f}", "val/loss": "val/loss {:.4f}", "val/bpb": "val/bpb {:.3f}"}
        shown["train/tokens_per_sec"] = "{:,.0f} tok/s"
        parts += [fmt.format(float(m[key])) for key, fmt in shown.items() if key in m]
        if trainer.max_steps > 0 and step > self._start_step:
            eta = (time.perf_counter() - self._start) / (step - self._start_step) * (trainer.max_steps - step)
            parts.append(f"ETA {eta // 60:.0f}m{eta % 60:02.0f}s")
        log.info(" | ".join(parts))

    def on_validation_end(self, trainer, pl_module) -> None:
        m = trainer.callback_metrics
        if not self._enabled or trainer.sanity_checking or "val/loss" not in m:
            return
        parts = [f"validation at step {trainer.global_step}", f"val/loss {float(m['val/loss']):.4f}"]
        if "val/ppl" in m:
            parts.append(f"val/ppl {float(m['val/ppl']):.2f}")
        if "val/bpb" in m:  # bits per UTF-8 byte: comparable across tokenizers
            parts.append(f"val/bpb {float(m['val/bpb']):.3f}")
        log.info(" | ".join(parts))


class TerminalProgress(TQDMProgressBar):
    """Lightning's TQDM bar, whose numbers (loss, tokens/s) are read every `metrics_every_n_steps` steps.

    Reading a logged loss makes the CPU wait for the GPU; the stock bar does it at every refresh, that
    is every step. The bar itself still moves every `refresh_rate` batches.
    """

    def __init__(self, metrics_every_n_steps: int, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.metrics_every_n_steps = every("metrics_every_n_steps", metrics_every_n_steps)
        self._metrics: dict | None = None
        self._metrics_step = -1

    def get_metrics(self, trainer, pl_module) -> dict:
        step = trainer.global_step
        if not trainer.training or self._metrics is None or step - self._metrics_step >= self.metrics_every_n_steps:
            self._metrics, self._metrics_step = super().get_metrics(trainer, pl_module), step
        return self._metrics


def progress_bar(every_n_steps: int, metrics_every_n_steps: int) -> ProgressBar:
    """A TQDM bar on a terminal, plain log lines every `every_n_steps` steps otherwise (a Rich bar is
    unreadable in log files)."""
    if sys.stdout.isatty():
        return TerminalProgress(metrics_every_n_steps)
    return PlainProgress(every_n_steps)


class LastCheckpoint(ModelCheckpoint):
    """last.ckpt every `every_n_train_steps` optimizer steps and once more when training ends.

    train.py saves through AtomicCheckpointIO (a temporary file in this folder, renamed into place), so a run
    killed mid-save leaves the previous last.ckpt intact; the temporary files such a kill leaves are removed
    when the next run starts.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int) -> None:
        every_n_train_steps = every("every_n_train_steps", every_n_train_steps)
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,  # always last.ckpt: a resume of a moved run folder rewrites it too
        )

    @property
    def state_key(self) -> str:
        return "LastCheckpoint"

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            remove_stale_temps(self.dirpath)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.fast_dev_run or self._last_global_step_saved == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def last_checkpoint_path(trainer: L.Trainer) -> str:
    """Path of the newest last.ckpt this run wrote, or ""."""
    return next((cb.last_model_path for cb in trainer.checkpoint_callbacks if cb.last_model_path), "")
