"""Training: the LightningModule, its schedule, precision choice and callbacks."""

from llm.training.module import LitGPT, OptimConfig

__all__ = ["LitGPT", "OptimConfig"]
