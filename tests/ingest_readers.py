"""Readers that misbehave on purpose, added to the registry by the hostile-ingest tests.

Workers import this module to run them (a reader crosses the pipe by reference), so it imports little:
its imports run under the worker's memory limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llm.data.reader import Extraction, Settings


def hang(path: Path, language: str | None, settings: Settings) -> Extraction:
    """Start a child (as OCR starts tesseract), write its pid where the file says, and never return."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(path.read_text().strip()).write_text(str(child.pid))
    time.sleep(600)
    raise AssertionError("the time limit should have killed this worker")


def allocate(path: Path, language: str | None, settings: Settings) -> Extraction:
    """Ask for as much memory as the whole worker may have: refused under ingest.max_memory_mb."""
    block = bytearray(settings.max_memory_mb * 2**20)
    return Extraction(f"allocated {len(block)} bytes", "allocate")


def crash(path: Path, language: str | None, settings: Settings) -> Extraction:
    """Die the way a worker dies when the kernel's out-of-memory killer picks it."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def pid(path: Path, language: str | None, settings: Settings) -> Extraction:
    """The id of the worker process that read the file."""
    return Extraction(str(os.getpid()), "pid")
