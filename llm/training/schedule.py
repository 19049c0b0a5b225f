"""Learning-rate schedules, as a multiplier of the peak lr: linear warmup, then a cosine decay to a floor
(`cosine`), or a constant rate and a linear cooldown to that floor at the end (`wsd`: warmup-stable-decay, the
modded-nanogpt speedrun's)."""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("cosine", "wsd")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier at optimizer step `step` (0-based): 0 -> 1 over warmup, then 1 -> min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_stable_decay(
    step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float, cooldown_frac: float
) -> float:
    """Multiplier at `step`: 0 -> 1 over warmup, 1 until the last cooldown_frac of total_steps, then linearly
    down to min_lr_ratio at total_steps. The peak lasts longer than a cosine's: more of the run at full speed."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr_ratio
    cooldown = max(1.0, cooldown_frac * total_steps)
    left = (total_steps - step) / cooldown  # > 1 before the cooldown starts
    return min_lr_ratio + (1 - min_lr_ratio) * min(1.0, left)


def lr_schedule(
    schedule: str, warmup_steps: int, total_steps: int, min_lr_ratio: float, cooldown_frac: float
) -> Callable[[int], float]:
    """The multiplier of step for optim.schedule (one of SCHEDULES): what LambdaLR and bench/speedrun.py call."""
    if schedule == "wsd":
        return lambda step: warmup_stable_decay(step, warmup_steps, total_steps, min_lr_ratio, cooldown_frac)
    return lambda step: warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio)
