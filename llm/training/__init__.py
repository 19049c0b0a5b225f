"""Training: the LightningModule, its schedule, precision choice and callbacks."""

from llm.training.module import LitGPT
from llm.training.optim import OptimConfig

__all__ = ["LitGPT", "OptimConfig"]
