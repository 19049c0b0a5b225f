"""Checkpoints written atomically in their own folder (llm/atomic.py), never through a temporary file in TMPDIR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from llm.atomic import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, whose local saves write `.<name>.<random>.partial` beside the target,
    fsync it and rename it over the target: a kill at any moment leaves the previous checkpoint whole.

    Lightning's own save writes a temporary file in TMPDIR and moves it; across filesystems (a tmpfs /tmp, a
    node's local disk beside shared storage) that move copies into the target in place. Remote paths
    (s3://, gs://, ...) still go through Lightning's fsspec save."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)
