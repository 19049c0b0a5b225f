"""Trainer values that Lightning would reject only deep inside fit, after ingest and tokenizing: checked first."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from llm.errors import ConfigError

log = logging.getLogger(__name__)


def check_trainer(trainer: Mapping, optim: Mapping) -> None:
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r} must be a whole number, at least 1")
    interval = trainer.get("val_check_interval")
    if interval is not None and (interval <= 0 or (isinstance(interval, float) and interval > 1)):
        raise ConfigError(
            f"trainer.val_check_interval={interval!r} must be a number of steps (>= 1) "
            "or a fraction of an epoch in (0, 1]"
        )
    max_steps = trainer.get("max_steps", -1)
    if max_steps is not None and (max_steps == 0 or max_steps < -1):
        raise ConfigError(f"trainer.max_steps={max_steps} must be at least 1, or -1 for no limit")
    warmup = optim.get("warmup_steps", 0)
    if max_steps is not None and max_steps > 0 and warmup >= max_steps:
        log.warning(
            "optim.warmup_steps=%d >= trainer.max_steps=%d: the learning rate never reaches optim.lr",
            warmup,
            max_steps,
        )
