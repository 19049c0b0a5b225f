"""What produced a number: the code's commit and the versions that ran it, for logs, figures and benchmarks."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The short commit of this checkout, with "+changes" when files differ from it; "unknown" outside git."""
    try:
        run = dict(cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10)
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+changes" if dirty else sha


def versions() -> str:
    """ "python 3.11.7, torch 2.13.0+cpu, lightning 2.6.6"."""
    import lightning
    import torch

    return f"python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}"


def describe() -> str:
    """One line for a log or a caption: the commit and the versions."""
    return f"commit {commit()}, {versions()}"


def hardware() -> str:
    """This machine in a few words: the GPUs when there are some, else the CPU's model and the cores this process
    may use ("CPU (Intel(R) Xeon(R) Processor, 2 cores)")."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU ({model}, {cores} cores)"
