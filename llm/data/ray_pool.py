"""ingest.backend=ray: the same per-file work as the local pool, on the CPUs of a Ray cluster.

Each Ray actor (one CPU) keeps a local worker.Pool of one process and feeds it the files it is given, one at
a time: the time limit, the memory limit, the process group killed with tesseract and the replacement of a
dead worker are the local pool's, unchanged, on whichever node the actor runs. Outcomes come back to the
driver, which writes the manifest and the cache as for a local run. Every node must see the input files at
the same paths (a shared filesystem), as the driver names them by path.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from llm.data.reader import Settings
from llm.data.worker import Pool, Task
from llm.errors import ConfigError

log = logging.getLogger(__name__)


class _Reader:
    """A Ray actor: one persistent local worker (started and warmed once), file after file."""

    def __init__(self, settings: Settings, preload: Sequence[str]) -> None:
        from llm.data import offline

        offline.set_environment()
        self.pool = Pool(1, settings, preload)

    def read(self, task: Task) -> dict[str, Any]:
        [(_, outcome)] = list(self.pool.serve([task]))  # run to its end: a generator closed early stops the worker
        return outcome


def connect(address: str | None) -> Any:
    """The ray module, connected: to `address` (ray://host:10001, host:6379, auto), or to a local Ray started
    in this process when address is None. A Ray already initialised (a test's, a notebook's) is used as it is."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError("data.ingest.backend=ray needs the ray package: pip install -e '.[ray]'") from e
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return ray


class RayPool:
    """worker.Pool's interface (`run(tasks)` yields each task with its outcome) over Ray actors."""

    def __init__(self, workers: int | None, settings: Settings, preload: Sequence[str] = ()) -> None:
        self.ray = connect(settings.address)
        self.n = workers or max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        self.settings = settings
        self.preload = tuple(preload)
        self.actor = self.ray.remote(num_cpus=1, max_restarts=0)(_Reader)

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, dict[str, Any]]]:
        ray = self.ray
        pending = tasks if isinstance(tasks, deque) else deque(tasks)  # a deque may grow as it runs (archives)
        idle: list[Any] = []
        actors: list[Any] = []
        busy: dict[Any, tuple[Any, Task]] = {}  # object ref -> (actor, task)
        try:
            while pending or busy:
                while pending and (idle or len(actors) < self.n):
                    if not idle:
                        actors.append(self.actor.remote(self.settings, self.preload))
                        idle.append(actors[-1])
                    actor, task = idle.pop(), pending.popleft()
                    busy[actor.read.remote(task)] = (actor, task)
                done, _ = ray.wait(list(busy), num_returns=1)
                for ref in done:
                    actor, task = busy.pop(ref)
                    try:
                        out = ray.get(ref)
                        idle.append(actor)
                    except ray.exceptions.RayError as e:  # the actor or its node died: another one takes over
                        why = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                        out = {"status": "error", "reason": f"Ray worker lost while reading this file: {why}"}
                        out["transient"] = True  # no fault of the file: tried again next run
                        ray.kill(actor)
                        actors.remove(actor)
                        replacement = self.actor.remote(self.settings, self.preload)
                        actors.append(replacement)
                        idle.append(replacement)
                    yield task, out
        finally:
            for actor in actors:
                ray.kill(actor)  # its fork server and worker follow it (parent_watch.py)
