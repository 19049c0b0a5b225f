"""Samples from fixed prompts and attention heatmaps, logged against the step to wandb and TensorBoard."""

from __future__ import annotations

import logging
import math

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from llm.training.callbacks import every

log = logging.getLogger(__name__)


class Samples(L.Callback):
    """A table of samples and one heatmap per attention head, at most `every_n_steps` apart, at least
    `min_per_run` times in a run of max_steps (evenly spaced), and always when training ends.

    wandb gets a table (every row so far) and images; TensorBoard gets text and images. A run logging to
    neither (CSV alone) generates nothing."""

    def __init__(
        self,
        every_n_steps: int,
        min_per_run: int,
        prompts: tuple[str, ...] = ("def ", "The model "),
        max_new_tokens: int = 48,
        attention_text: str = "def add(a, b):\n    return a + b\n",
    ) -> None:
        self.every_n_steps = every("every_n_steps", every_n_steps)
        self.min_per_run = every("min_per_run", min_per_run)
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens
        self.attention_text = attention_text
        self.interval = self.every_n_steps
        self._rows: list[list] = []
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_steps > 0:  # a 40-step run samples every 10 steps, a 300-step one every 75
            self.interval = min(self.every_n_steps, max(1, math.ceil(trainer.max_steps / self.min_per_run)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.interval == 0:  # after optimizer steps interval, 2 x interval, ...
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_samples(trainer, pl_module)  # the final model, after its last validation

    def log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step - 1  # the step Lightning logs this batch's metrics at: 0 is the first
        wandb_logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        tb_logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if step == self._last_step or not trainer.is_global_zero or tokenizer is None:
            return
        if wandb_logger is None and tb_logger is None:
            return
        self._last_step = step
        texts, maps = self.generate(pl_module, tokenizer)
        self._rows += [[step, p, t] for p, t in zip(self.prompts, texts, strict=True)]
        if wandb_logger is not None:
            import wandb

            images = {
                f"attention/layer{i}": [
                    wandb.Image(_heat(m[h]), caption=f"layer {i} head {h}") for h in range(m.shape[0])
                ]
                for i, m in enumerate(maps)
            }
            table = wandb.Table(columns=["step", "prompt", "sample"], data=self._rows)
            wandb_logger.experiment.log({"samples": table, **images, "trainer/global_step": step})
        if tb_logger is not None:
            writer = tb_logger.experiment
            text = "\n\n".join(f"**{p!r}**\n\n" + _indent(p + t) for p, t in zip(self.prompts, texts, strict=True))
            writer.add_text("samples", text, step)
            for i, m in enumerate(maps):  # the heads side by side
                writer.add_image(f"attention/layer{i}", np.hstack([_heat(h) for h in m]), step, dataformats="HW")

    def generate(self, pl_module: L.LightningModule, tokenizer) -> tuple[list[str], list[torch.Tensor]]:
        """The prompts' continuations, and the attention weights (n_head, T, T) of each layer on attention_text."""
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
                maps = [w[0] for w in net.attention_weights(ids)]
        finally:
            net.train(was_training)
        return [g.text for g in texts], maps


def _indent(text: str) -> str:
    """A Markdown code block: TensorBoard renders text summaries as Markdown."""
    return "\n".join("    " + line for line in text.splitlines())


def _heat(weights: torch.Tensor, scale: int = 8) -> np.ndarray:
    """(T, T) attention weights -> an upscaled grayscale image, white = 1."""
    img = (weights.float().cpu().clamp(0, 1).numpy() * 255).astype(np.uint8)
    return img.repeat(scale, 0).repeat(scale, 1)
