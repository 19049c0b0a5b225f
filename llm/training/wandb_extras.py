"""What a wandb dashboard shows beyond the metrics: parameters, samples, attention, the data manifest.

Runs offline unless WANDB_MODE says otherwise (train.py sets the default); `wandb sync` uploads later.
The run id goes into every checkpoint, so a resumed run continues the same wandb run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from llm.training.callbacks import every

log = logging.getLogger(__name__)


def _wandb(trainer: L.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class WandbExtras(L.Callback):
    """Every `every_n_steps` steps: a table of samples from fixed prompts and attention heatmaps."""

    def __init__(
        self,
        every_n_steps: int,
        prompts: tuple[str, ...] = ("def ", "The model "),
        max_new_tokens: int = 48,
        attention_text: str = "def add(a, b):\n    return a + b\n",
    ) -> None:
        self.every_n_steps = every("every_n_steps", every_n_steps)
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens
        self.attention_text = attention_text
        self._rows: list[list] = []
        self._last_step = -1

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

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps or not trainer.is_global_zero:
            return
        logger = _wandb(trainer)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if logger is None or tokenizer is None:
            return
        self._last_step = step
        import wandb

        from llm.sampler import generate

        net = pl_module.net
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                texts = generate(net, tokenizer, self.prompts, self.max_new_tokens, temperature=0.8, seed=0)
                ids = torch.tensor(
                    [tokenizer.encode(self.attention_text).ids[: net.config.block_size]], device=pl_module.device
                )
                maps = [w[0] for w in net.attention_weights(ids)]  # (n_head, T, T) per layer
        finally:
            net.train(was_training)
        self._rows += [[step, p, g.text] for p, g in zip(self.prompts, texts, strict=True)]
        images = {
            f"attention/layer{i}": [wandb.Image(_heat(m[h]), caption=f"layer {i} head {h}") for h in range(m.shape[0])]
            for i, m in enumerate(maps)
        }
        table = wandb.Table(columns=["step", "prompt", "sample"], data=self._rows)
        logger.experiment.log({"samples": table, **images, "trainer/global_step": step})

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        logger = _wandb(trainer)
        if logger is not None and trainer.is_global_zero:
            checkpoint["wandb_run_id"] = logger.experiment.id

    def teardown(self, trainer, pl_module, stage: str) -> None:
        logger = _wandb(trainer)
        if logger is not None and trainer.is_global_zero and stage == "fit":
            logger.experiment.finish()  # flush the offline run folder now, not at interpreter exit


def _heat(weights: torch.Tensor, scale: int = 8) -> np.ndarray:
    """(T, T) attention weights -> an upscaled grayscale image, white = 1."""
    img = (weights.float().cpu().clamp(0, 1).numpy() * 255).astype(np.uint8)
    return img.repeat(scale, 0).repeat(scale, 1)
