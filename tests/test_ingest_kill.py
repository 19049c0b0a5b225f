"""A killed ingest leaves nothing running: workers, the fork server and tesseract die with the main process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ingest_fixtures import image_bytes, needs_ocr, write

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc (Linux)")


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a live process; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return int(fields[1]), fields[0], fields[19]


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every process under root (root included)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents[int(entry)] = st
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in parents:
            found[pid] = parents[pid][2]
            frontier += [p for p, (ppid, _, _) in parents.items() if ppid == pid]
    return found


def _alive(pid: int, started: str) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z" and st[2] == started  # a zombie is dead; a reused pid is another


def _names(pids) -> set[str]:
    names = set()
    for pid in pids:
        try:
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            pass
    return names


@needs_ocr
def test_sigkill_of_ingest_leaves_no_process_alive(tmp_path):
    lines = [f"Line {i} of a long scanned letter about the orchard and the mill" for i in range(30)]
    for i in range(6):  # slow files: each keeps tesseract busy for seconds
        write(tmp_path / "in" / f"scan-{i}.png", image_bytes([f"Letter {i}", *lines], "PNG"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "llm.ingest", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--workers", "2"]
    main = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while "tesseract" not in _names(seen) and time.monotonic() < deadline and main.poll() is None:
            seen.update(_descendants(main.pid))
            time.sleep(0.1)
        assert "tesseract" in _names(seen), f"tesseract never ran under ingest: {_names(seen)}"
        seen.update(_descendants(main.pid))
        main.send_signal(signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p, s) for p, s in seen.items()):
            time.sleep(0.1)
        left = {p for p, s in seen.items() if _alive(p, s)}
        assert not left, f"alive 5 s after SIGKILL: {sorted(_names(left))}"
        assert len(seen) >= 4  # main, fork server, 2 workers, tesseract (and the resource tracker)
    finally:
        for pid, started in seen.items():  # what this test started, should the assertion fail
            if _alive(pid, started):
                os.kill(pid, signal.SIGKILL)
