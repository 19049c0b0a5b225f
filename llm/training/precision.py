"""Pick the training precision for the hardware, and say so when a request cannot be honoured."""

from __future__ import annotations

import logging

import torch

from llm.errors import ConfigError

log = logging.getLogger(__name__)

ALLOWED = ("auto", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true", "transformer-engine")


def resolve_precision(requested: str | int, accelerator: str) -> str:
    """'auto': bf16-mixed on GPUs that support it, 16-mixed (with loss scaling) on older GPUs, 32-true on CPU."""
    requested = str(requested)
    if requested not in ALLOWED and requested not in {"32", "16", "bf16", "64"}:
        raise ConfigError(f"trainer.precision={requested!r} is not one of {list(ALLOWED)}")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if requested == "auto":
        if not on_gpu:
            return "32-true"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if requested in ("16-mixed", "16") and not on_gpu:
        log.warning(
            "trainer.precision=16-mixed needs a CUDA GPU (float16 with loss scaling); on CPU training runs in "
            "bf16-mixed instead. Set trainer.precision=32-true or bf16-mixed to silence this."
        )
        return "bf16-mixed"
    return requested
