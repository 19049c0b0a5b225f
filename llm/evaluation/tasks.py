"""lm-evaluation-harness tasks by name: checked, with their data found offline, before any model is loaded.

`tasks=[...]` takes any task, group or tag the harness knows, and those of the YAML files under include_path
(task YAMLs of your own, with local JSON/JSONL data: `dataset_path: json`, `dataset_kwargs: {data_files: ...}`).
`bpb` is ours (llm/evaluation/bpb.py), not the harness's.

Nothing here reaches the network: HF_DATASETS_OFFLINE=1 unless you set it to 0 yourself. A task whose dataset is
not in the local cache stops the evaluation before any work, in one line that names the task and the command
that fetches it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llm.errors import ConfigError

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

BPB = "bpb"  # our own task: bits per byte on held-out documents
GROUNDED = "grounded"  # our own task: questions about the documents, with and without retrieval (grounded.py)
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # datasets' loaders of local files


def offline() -> bool:
    """Keep the datasets library off the network unless the user turned it on (HF_DATASETS_OFFLINE=0).
    Call before lm_eval or datasets is imported: datasets reads the variable once, at import."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return os.environ["HF_DATASETS_OFFLINE"].lower() not in ("0", "false", "no", "off")


def split_tasks(tasks: object) -> tuple[bool, list[str]]:
    """(whether bpb is asked for, the harness's task names), or a ConfigError naming `tasks`."""
    if isinstance(tasks, str):
        tasks = [tasks]
    if not isinstance(tasks, Sequence) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"tasks={tasks!r} must be a non-empty list of task names, e.g. 'tasks=[bpb,arc_easy]'")
    names = list(dict.fromkeys(tasks))
    return BPB in names, [t for t in names if t not in (BPB, GROUNDED)]


def harness() -> None:
    """lm-eval importable, or a ConfigError that says how to install it."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            "tasks: lm-evaluation-harness is not installed: pip install 'lm-eval>=0.4' (or make install, which "
            "installs the project's eval extra); tasks=[bpb] alone needs nothing more"
        ) from e


def task_manager(names: Sequence[str], include_path: str | None) -> TaskManager:
    """The harness's index of tasks: include_path's alone when it has every name (fast), else with the built-in ones.
    An unknown name is a ConfigError that lists where to look."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        folder = Path(include_path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"include_path={include_path}: no such folder (a folder of task YAML files)")
        own = TaskManager(include_path=str(folder), include_defaults=False)
        if all(_leaves(own, n, strict=False) is not None for n in names):
            return own
    manager = TaskManager(include_path=str(Path(include_path).expanduser()) if include_path else None)
    unknown = [n for n in names if n not in manager.task_index]
    if unknown:
        where = f" nor under include_path={include_path}" if include_path else ""
        raise ConfigError(
            f"tasks: {unknown} are not tasks, groups or tags of lm-eval{where} (nor {BPB!r}): "
            "`lm-eval ls tasks` lists them; include_path=DIR adds task YAMLs of your own"
        )
    return manager


def _leaves(manager: TaskManager, name: str, strict: bool = True) -> list[dict] | None:
    """The configs of the tasks `name` stands for (a group's and a tag's members, recursively); None when a name
    is not in this index (strict=False) ."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index.get(name)
    if entry is None:
        if strict:
            raise ConfigError(f"tasks: {name!r} is not a task lm-eval knows")
        return None
    if entry.kind == Kind.TAG:
        members: list = sorted(entry.tags)
    elif entry.kind == Kind.GROUP:
        members = [m if isinstance(m, str) else m.get("task") for m in (entry.cfg or {}).get("task", [])]
    else:
        return [dict(entry.cfg or {}, task=name)]
    leaves: list[dict] = []
    for member in members:
        if isinstance(member, str):
            found = _leaves(manager, member, strict)
            if found is None:
                return None
            leaves += found
    return leaves


def missing_data(manager: TaskManager, names: Sequence[str]) -> Iterator[str]:
    """One line for each task whose data is not on this machine: the task, the dataset, the command that fetches it."""
    import datasets

    for name in names:
        for cfg in _leaves(manager, name):
            path, config = cfg.get("dataset_path"), cfg.get("dataset_name")
            kwargs = dict(cfg.get("dataset_kwargs") or {})
            if path is None or "custom_dataset" in cfg:  # a Python task that loads its own data
                continue
            if path in LOCAL_BUILDERS:
                files = kwargs.get("data_files") or {}
                files = files.values() if isinstance(files, dict) else [files]
                flat = [f for group in files for f in ([group] if isinstance(group, str) else group)]
                absent = [f for f in flat if not Path(f).exists()]
                if absent:
                    yield f"tasks: {cfg['task']} reads {absent[0]}, which does not exist (dataset_kwargs.data_files)"
                continue
            try:  # offline, this finds the dataset only in the local cache
                datasets.load_dataset_builder(path, config, **kwargs)
            except Exception:
                args = repr(path) + (f", {config!r}" if config else "")
                yield (
                    f"tasks: {cfg['task']} needs the dataset {path}"
                    + (f" ({config})" if config else "")
                    + ", which is not in the local cache and the network is off; fetch it once with: "
                    f'HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0 python -c "import datasets; datasets.load_dataset({args})"'
                )


def run_harness(
    lm: object,
    manager: TaskManager,
    names: Sequence[str],
    num_fewshot: int | None,
    limit: int | float | None,
    seed: int,
    log_samples: bool,
) -> dict:
    """lm-eval's simple_evaluate on our model: its results dict, as `lm_eval` writes it (samples under "samples")."""
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model=lm,
        tasks=list(names),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=log_samples,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    assert results is not None  # one process: rank 0
    return results
