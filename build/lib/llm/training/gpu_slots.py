"""One job per GPU: a job claims a free device by taking its lock file, and holds it until it ends."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llm.errors import ConfigError


@contextmanager
def claim_device(n_devices: int, lock_dir: str | Path | None = None, poll_s: float = 1.0) -> Iterator[int]:
    """Yield the index of a device no other job holds; wait while all are taken."""
    if n_devices < 1:
        raise ConfigError("one_job_per_gpu (sweep=per_gpu) needs CUDA GPUs, and torch sees none on this machine")
    try:
        import fcntl  # POSIX file locks: Linux and macOS
    except ImportError:
        raise ConfigError("one_job_per_gpu (sweep=per_gpu) needs POSIX file locks: use Linux or macOS") from None
    folder = Path(lock_dir or os.environ.get("LLM_GPU_LOCK_DIR", tempfile.gettempdir()))
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for index in range(n_devices):
            f = (folder / f"llm-gpu-{index}.lock").open("w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
            return
        time.sleep(poll_s)
