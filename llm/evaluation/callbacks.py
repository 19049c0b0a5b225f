"""Evaluation during training (callbacks.evaluate) and the report card at its end (callbacks.report).

Both run on the global-zero rank; the others wait for it. Tasks are checked, and their data found, when fit starts:
a missing dataset stops the run before its first step.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from llm.atomic import write_text
from llm.errors import ConfigError
from llm.evaluation.results import flat_metrics, log_to_trainer, write_results
from llm.evaluation.suite import Plan

log = logging.getLogger(__name__)


class EvaluateTasks(L.Callback):
    """`tasks` every `every_n_steps` optimizer steps (null: only at the end) and when training ends: results to
    <run>/eval/results.json and to the run's loggers as eval/<task>/<metric>. tasks=[]: off."""

    def __init__(
        self,
        tasks: Sequence[str],
        every_n_steps: int | None,
        run_dir: str,
        include_path: str | None,
        num_fewshot: int | None,
        limit: int | float | None,
        batch_size: int,
        max_gen_toks: int,
        windows: int | None,
        seed: int,
    ) -> None:
        whole = isinstance(every_n_steps, int) and not isinstance(every_n_steps, bool)
        if every_n_steps is not None and not (whole and every_n_steps >= 1):
            raise ConfigError(
                f"callbacks.evaluate.every_n_steps={every_n_steps!r} must be a whole number of steps, at least 1, "
                "or null (only at the end)"
            )
        self.tasks = list(tasks or [])
        self.every_n_steps = every_n_steps
        self.run_dir = Path(run_dir)
        self.settings = dict(
            include_path=include_path,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            max_gen_toks=max_gen_toks,
            stride=None,
            windows=windows,
            seed=seed,
            log_samples=False,
        )
        self.plan: Plan | None = None
        self._done_step = -1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tasks, data = self.tasks, trainer.datamodule
        if "bpb" in tasks and not getattr(data, "holds_documents", True):
            log.info(
                "callbacks.evaluate: bpb scores held-out documents and a run on conversations has none "
                "(its val/bpb is over the assistant's tokens): left out"
            )
            tasks = [t for t in tasks if t != "bpb"]
        elif "bpb" in tasks and data is not None and getattr(data, "val_set", True) is None:
            log.info("callbacks.evaluate: bpb left out: this run held out no documents (data.val_fraction)")
            tasks = [t for t in tasks if t != "bpb"]
        if tasks:  # every value and every task's data checked before the first step
            self.plan = Plan.make(tasks, prefix="callbacks.evaluate.", **self.settings)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.plan and self.every_n_steps and step % self.every_n_steps == 0 and step != self._done_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.plan and trainer.global_step != self._done_step and not trainer.fast_dev_run:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = self._done_step = trainer.global_step
        if trainer.is_global_zero:
            from llm.evaluation.bpb import validation_documents

            data = trainer.datamodule
            start = time.perf_counter()
            results = self.plan.score(
                pl_module.net, data.tokenizer, lambda: validation_documents(data.out_dir, data.val_fraction, data.seed)
            )
            folder = self.run_dir / "eval"
            folder.mkdir(parents=True, exist_ok=True)
            key = {"model": str((self.run_dir / "checkpoints" / "last.ckpt").resolve()), "step": step}
            write_results(folder, results, key)
            metrics = flat_metrics(results)
            log_to_trainer(trainer, metrics, step)
            shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4f}" for k, v in metrics.items() if "stderr" not in k)
            log.info("evaluation at step %d (%.1f s): %s", step, time.perf_counter() - start, shown)
        trainer.strategy.barrier("evaluate")


class ReportCard(L.Callback):
    """report.md when training ends (llm/evaluation/report.py), and compute.json: the seconds, tokens and steps
    this run trained (kept in checkpoints, so a resumed run adds to them), the hardware and the precision."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = Path(run_dir)
        self.seconds, self.tokens, self.steps = 0.0, 0, 0
        self._start: float | None = None
        self._first_step = 0

    @property
    def state_key(self) -> str:
        return "ReportCard"

    def state_dict(self) -> dict:
        return {"seconds": self.seconds + self._elapsed(), "tokens": self.tokens}

    def load_state_dict(self, state: dict) -> None:
        self.seconds, self.tokens = float(state["seconds"]), int(state["tokens"])

    def _elapsed(self) -> float:
        return time.perf_counter() - self._start if self._start is not None else 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += batch["input"].numel() * trainer.world_size

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        from llm.evaluation.report import COMPUTE, write_report
        from llm.provenance import hardware

        self.seconds += self._elapsed()
        self._start = None
        compute = {"seconds": round(self.seconds, 3), "tokens": self.tokens, "steps": trainer.global_step}
        compute |= {"hardware": hardware(), "precision": str(trainer.precision), "devices": trainer.world_size}
        write_text(self.run_dir / COMPUTE, json.dumps(compute, indent=1) + "\n")
        for logger in trainer.loggers:
            logger.save()  # metrics.csv holds every row before the report reads it
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        last = self.run_dir / "checkpoints" / "last.ckpt"
        write_report(self.run_dir, pl_module.net, trainer.datamodule.tokenizer, str(last), trainer.global_step, final)
