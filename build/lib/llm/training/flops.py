"""Peak dense bf16/fp16 tensor-core FLOP/s of common GPUs, for model FLOPs utilisation (MFU).

Figures are the vendors' dense (no sparsity) numbers. MFU = achieved model FLOP/s / peak; "n/a" on
devices not listed here (and on CPUs).
"""

from __future__ import annotations

import torch

PEAK_FLOPS = {  # substring of torch.cuda.get_device_name() -> dense bf16/fp16 FLOP/s
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX 6000 Ada": 364e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(device: torch.device | str | None = None) -> float | None:
    """The device's peak FLOP/s, or None where unknown (CPU, unlisted GPU)."""
    if not torch.cuda.is_available() or torch.device(device or "cuda").type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS.items():  # longer, more specific names are listed first
        if key in name:
            return flops
    return None
