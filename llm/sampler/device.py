"""Where and how a generation runs: the device, the weights' dtype, whether the decode step is compiled."""

from __future__ import annotations

import logging

import torch

from llm.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # weights and cache


def resolve_device(name: str) -> torch.device:
    """auto: cuda when torch can use a GPU, else cpu; or a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but this machine has no CUDA GPU that torch can use: use auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on GPUs that support it, float32 otherwise; or one of DTYPES."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is not one of {['auto', *DTYPES]}")
    return DTYPES[name]


def resolve_compile(value: object, device: torch.device, kv_cache: bool) -> bool:
    """auto: compile the decode step on CUDA (CUDA graphs); true / false to force. Only the cached step compiles."""
    if str(value) not in ("auto", "True", "False", "true", "false"):
        raise ConfigError(f"compile={value!r} must be auto, true or false")
    if str(value) == "auto":
        wanted = device.type == "cuda"
    else:
        wanted = str(value).lower() == "true"
    if wanted and not kv_cache:
        log.info("compile applies to the cached decode step only: kv_cache=false runs eagerly")
    return wanted and kv_cache
