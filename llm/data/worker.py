"""Worker processes: one file at a time each, under a time limit and a memory limit.

A worker that runs past the time limit is killed with its process group (tesseract included); one
that dies (out of memory, a crash in a C library) is replaced. Either way that file gets an `error`
record and the run goes on. Workers die with the process that started them (`die_with_parent`), so a
killed ingest leaves nothing running.

Linux and macOS: workers fork from a fork server, each in its own process group, under RLIMIT_AS
(enforced by Linux). Windows: workers are spawned, without a process group or a memory limit.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from llm.data import offline
from llm.data.reader import Read, Refused, Settings

log = logging.getLogger(__name__)

# how an allocation refused by RLIMIT_AS shows up in C libraries and the tools they start
OOM_MESSAGES = ("failed to map segment", "Cannot allocate memory", "std::bad_alloc", "out of memory")


def cpu_count() -> int:
    """The cores this process may run on: its affinity mask where the OS has one (Linux), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class Task:
    index: int
    path: str
    read: Read  # the reader, from the registry (formats.py); crosses the pipe by reference
    language: str | None = None
    heavy: bool = False  # read through unstructured: scheduled first


def run_task(task: Task, settings: Settings) -> dict[str, Any]:
    """Extract one file; never raises. The outcome is a plain dict that crosses the pipe."""
    start = time.perf_counter()
    try:
        ex = task.read(Path(task.path), task.language, settings)
        out: dict[str, Any] = {
            "status": "ok",
            "text": ex.text,
            "strategy": ex.strategy,
            "pages": ex.pages,
            "language": ex.language,
        }
        if ex.page_starts:
            out["page_starts"] = {str(page): at for page, at in ex.page_starts.items()}  # as JSON keeps it
        if ex.rotated:
            out["rotated"] = {str(page): degrees for page, degrees in ex.rotated.items()}  # as JSON keeps it
        if ex.members is not None:  # an archive: its members are read next, each as a file of its own
            out |= {"status": "unpacked", "members": ex.members, "single": ex.single}
            del out["text"]
    except Refused as e:
        out = {"status": e.status, "reason": e.reason, "transient": e.transient}
    except ImportError as e:  # a missing package is no fault of the file: not cached, tried again next run
        reason = f"missing Python package: {e} (make install, or pip install -e '.[ingest]')"[:500]
        out = {"status": "error", "reason": reason, "transient": True}
    except Exception as e:  # a parser's failure on this file's bytes, or the memory guard
        reason = f"{type(e).__name__}: {e}"[:500]
        if isinstance(e, MemoryError) or any(m in reason for m in OOM_MESSAGES):
            limit = f"out of memory (ingest.max_memory_mb={settings.max_memory_mb})"
            out = {"status": "error", "reason": f"{limit}: {reason}"[:500], "limit": True}
        else:
            out = {"status": "error", "reason": reason}
    out["seconds"] = time.perf_counter() - start
    return out


def limit_memory(max_memory_mb: int) -> bool:
    """Cap this process's address space (RLIMIT_AS); False where the OS has no such limit (Windows)."""
    try:
        import resource  # POSIX only
    except ImportError:
        return False
    limit = max_memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError) as e:  # some kernels refuse a limit below what is already mapped
        log.debug("memory limit not set: %s", e)
        return False
    return True


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_S = 0.2  # how often the watchdog asks who the parent is


def _kill_group() -> None:
    """SIGKILL this process's group: the worker and every program it started (tesseract)."""
    os.killpg(os.getpgrp(), signal.SIGKILL)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def watch_parent(then: Callable[[], None]) -> None:
    """Call `then` from a daemon thread as soon as this process's parent is gone (os.getppid() changes)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_S)
        then()

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def die_with_parent() -> None:
    """Take this process's group (call it as a group leader) down when its parent dies, however it dies.

    Linux: the kernel sends SIGTERM on the parent's death (prctl PR_SET_PDEATHSIG), and its handler kills the
    group; SIGKILL itself would leave tesseract running, orphaned. Everywhere (macOS has no such prctl): a
    thread polls os.getppid(), which changes when the parent is gone; it also covers a main thread that is
    inside a long C call, where Python signal handlers wait. A worker's parent is the fork server, which
    follows the main process the same way (llm/data/parent_watch.py).
    """
    if not hasattr(os, "getppid") or not hasattr(os, "killpg"):  # Windows
        return
    signal.signal(signal.SIGTERM, lambda *_: _kill_group())
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    watch_parent(_kill_group)


def _worker_main(conn: Connection, settings: Settings, preload: Sequence[str]) -> None:
    if hasattr(os, "setpgrp"):
        os.setpgrp()  # so a time-out kills tesseract with the worker
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    for module in preload:  # already imported where the fork server preloaded them
        try:
            importlib.import_module(module)
        except ImportError:  # the ingest extra is missing: the files that need it say so
            pass
    limit_memory(settings.max_memory_mb)
    offline.set_environment()
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its repair notes on broken files: the record says it
    from PIL import Image

    warnings.simplefilter("error", Image.DecompressionBombWarning)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send((task.index, None))  # the file's time limit starts now, not while this worker was starting
        conn.send((task.index, run_task(task, settings)))


def _context(preload: Sequence[str]) -> mp.context.BaseContext:
    """Workers fork from one server process per parent, started by the first pool, which imports `preload`
    there once (a later pool with more to preload imports it in each worker instead). Where there is no fork
    server (Windows) each worker is spawned."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["llm.data.parent_watch", "llm.data.worker", *preload])
    return ctx


@contextmanager
def _without_main() -> Iterator[None]:
    """Start a worker without re-running the parent's __main__ (train.py, a notebook, stdin) in it.

    multiprocessing re-imports the main script in every child it starts; workers need nothing from it.
    """
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)


@dataclass
class _Worker:
    process: Any
    conn: Connection


STARTUP_S = 300.0  # what a new worker may take to import its readers before its first file's time limit starts


class Pool:
    """`workers` processes fed one task at a time; results come back as they finish.

    A file's time limit (ingest.timeout_s) counts from the moment its worker takes it, so a worker that is
    still importing the PDF/OCR stack (seconds on a busy machine) never eats into it."""

    def __init__(self, workers: int, settings: Settings, preload: Sequence[str] = ()) -> None:
        """preload: modules every worker needs (readers' imports), imported once in the fork server."""
        self.n = max(1, workers)
        self.settings = settings
        self.preload = tuple(preload)
        self.ctx = _context(self.preload)
        self.workers: list[_Worker] = []

    def _start(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        args = (child, self.settings, self.preload)
        p = self.ctx.Process(target=_worker_main, args=args, daemon=True, name="ingest-worker")
        with _without_main():
            p.start()
        child.close()
        w = _Worker(p, parent)
        self.workers.append(w)
        return w

    def _kill(self, w: _Worker) -> None:
        if hasattr(os, "killpg"):
            try:
                os.killpg(w.process.pid, signal.SIGKILL)  # the worker's process group: tesseract too
            except (ProcessLookupError, PermissionError):
                pass
        w.process.kill()
        w.process.join(5)
        w.conn.close()
        self.workers.remove(w)

    def _died(self, w: _Worker) -> dict[str, Any]:
        w.process.join(5)
        code = w.process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            why = f"worker killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        else:
            why = f"worker exited with code {code}"
        return {"status": "error", "reason": f"{why} while reading this file", "limit": True}

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, dict[str, Any]]]:
        """Each task with its outcome, as they finish; the workers are stopped at the end. A deque may grow while
        it runs (see serve)."""
        try:
            yield from self.serve(tasks)
        finally:
            self.close()

    def serve(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, dict[str, Any]]]:
        """As run(), but the workers stay up for the next call (a Ray actor serves file after file with them).

        A deque is consumed as it is, so the caller may append to it between results (an archive's members)."""
        pending = tasks if isinstance(tasks, deque) else deque(tasks)
        idle: list[_Worker] = list(self.workers)  # between calls nothing is in flight
        busy: dict[Connection, tuple[_Worker, Task, float, float]] = {}
        timeout = self.settings.timeout_s
        try:
            while pending or busy:
                while pending and (idle or len(self.workers) < self.n):
                    w = idle.pop() if idle else self._start()
                    task = pending.popleft()
                    try:
                        w.conn.send(task)
                    except (BrokenPipeError, OSError):
                        pending.appendleft(task)
                        self._kill(w)
                        continue
                    now = time.monotonic()
                    busy[w.conn] = (w, task, now, now + timeout + STARTUP_S)  # until the worker says it started
                next_deadline = min(d for _, _, _, d in busy.values())
                for conn in wait(list(busy), timeout=max(0.0, next_deadline - time.monotonic())):
                    w, task, started, _ = busy.pop(conn)
                    try:
                        _, out = conn.recv()
                        if out is None:  # the worker took the file: its time limit runs from here
                            now = time.monotonic()
                            busy[conn] = (w, task, now, now + timeout)
                            continue
                        idle.append(w)
                    except (EOFError, OSError):
                        out = self._died(w)
                        out["seconds"] = time.monotonic() - started
                        self._kill(w)
                    yield task, out
                now = time.monotonic()
                for conn, (w, task, started, deadline) in list(busy.items()):
                    if now >= deadline:
                        del busy[conn]
                        self._kill(w)
                        reason = f"timed out after {timeout:g} s (ingest.timeout_s)"
                        yield task, {"status": "error", "reason": reason, "seconds": now - started, "limit": True}
        except BaseException:  # abandoned or interrupted: the files in flight would be lost with the workers
            self.close()
            raise

    def close(self) -> None:
        for w in list(self.workers):
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in list(self.workers):
            w.process.join(2)
            self._kill(w)
