"""What produced a number: the code's commit and the versions that ran it, for logs, figures and benchmarks."""

from __future__ import annotations

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
