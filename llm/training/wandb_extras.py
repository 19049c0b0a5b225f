"""What a wandb dashboard shows beyond the metrics and samples: parameter counts, the data manifest.

Runs offline unless WANDB_MODE says otherwise (train.py sets the default); `wandb sync` uploads later.
The run id goes into every checkpoint, so a resumed run continues the same wandb run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from llm.checkpoint import WANDB_RUN_ID

log = logging.getLogger(__name__)


def _wandb(trainer: L.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class WandbExtras(L.Callback):
    """Parameter counts and the ingest manifest when fit starts; the run id in every checkpoint (a resume
    continues the same run). Samples and heatmaps: llm/training/samples.py."""

    def on_fit_start(self, trainer, pl_module) -> None:
        logger = _wandb(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        net = pl_module.net
        logger.experiment.summary.update(
            {"params/total": net.num_params(non_embedding=False), "params/non_embedding": net.num_params()}
        )
        manifest = Path(trainer.datamodule.out_dir) / "manifest.jsonl" if trainer.datamodule else None
        if manifest is not None and manifest.exists():
            import wandb

            artifact = wandb.Artifact("ingest-manifest", type="dataset", description="one record per input file")
            artifact.add_file(str(manifest))
            logger.experiment.log_artifact(artifact)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        logger = _wandb(trainer)
        if logger is not None and trainer.is_global_zero:
            checkpoint[WANDB_RUN_ID] = logger.experiment.id

    def teardown(self, trainer, pl_module, stage: str) -> None:
        logger = _wandb(trainer)
        if logger is not None and trainer.is_global_zero and stage == "fit":
            logger.experiment.finish()  # flush the offline run folder now, not at interpreter exit
