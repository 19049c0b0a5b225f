"""Loggers that continue a resumed run's history instead of starting it again, and the run's config as
every logger's hyperparameters."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)


class CSVLogger(_CSVLogger):
    """Lightning's CSVLogger, which deletes an existing metrics.csv; given `resume_step` it keeps the rows
    logged before that step and appends after them (the rows a killed run wrote later are trained again)."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        fields, kept = [], []
        if self.resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                fields = list(reader.fieldnames or [])
                kept = [r for r in reader if r.get("step") and int(float(r["step"])) < self.resume_step]
        writer = super().experiment  # removes metrics.csv
        if kept and writer is not None:
            with path.open("w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=fields)
                out.writeheader()
                out.writerows(kept)
            writer.metrics_keys = sorted(fields)
            log.info("metrics.csv continues after step %d (%d earlier rows kept)", self.resume_step - 1, len(kept))
        return writer


# The metrics of the final model that TensorBoard's HPARAMS tab shows beside each run's hyperparameters
FINAL_METRICS = ("val/loss", "val/bpb")


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as one level of dotted keys (`optim.lr`, `model.config.n_layer`): what dashboards
    group and filter runs by. `_target_` keys are left out, and so are nodes that only repeat another
    (module.net is ${model})."""
    flat: dict[str, Any] = {}

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node:
            if key == "_target_":
                continue
            value = node[key]
            if isinstance(value, DictConfig):
                if not OmegaConf.is_interpolation(node, key):
                    walk(value, f"{prefix}{key}.")
            elif isinstance(value, ListConfig):
                flat[f"{prefix}{key}"] = OmegaConf.to_container(value, resolve=True)
            else:
                flat[f"{prefix}{key}"] = value

    walk(cfg, "")
    return flat


class LogHyperparameters(L.Callback):
    """`params` to every logger when fit starts (wandb's config, TensorBoard's and CSV's hparams.yaml); when
    training ends, TensorBoard's hparams again with FINAL_METRICS as their metrics."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.params)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(trainer.callback_metrics[k]) for k in FINAL_METRICS if k in trainer.callback_metrics}
        if not metrics:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(self.params, metrics=metrics, step=trainer.global_step)
