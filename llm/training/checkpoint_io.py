"""Checkpoints written atomically in their own folder (llm/checkpoint.py's write_checkpoint, llm/atomic.py), never
through a temporary file in TMPDIR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from llm.checkpoint import write_checkpoint


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
        write_checkpoint(checkpoint, Path(str(path).removeprefix("file://")))
