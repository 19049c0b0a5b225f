"""Where the Hydra configs live and what they need: the config folder, the resolvers, the model presets.

The YAML files ship inside the package (the wheel holds them as `llm/conf/`); in a checkout they are the
top-level `conf/` folder. Resolvers are registered by the entry points (`register_resolvers()`), not on import.
"""

from __future__ import annotations

import logging
import sys
import sysconfig
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, ListConfig, OmegaConf

from llm.errors import ConfigError

if TYPE_CHECKING:
    from llm.model import GPTConfig

PACKAGE_DIR = Path(__file__).resolve().parent


def check_flag(key: str, value: object) -> bool:
    """A boolean key's value: true or false only (Hydra reads `x=maybe` as the string 'maybe', which is truthy)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value


def config_dir() -> Path:
    """The folder holding train.yaml, infer.yaml and the config groups."""
    installed = PACKAGE_DIR / "conf"  # a wheel: conf/ is package data
    if (installed / "train.yaml").is_file():
        return installed
    return PACKAGE_DIR.parent / "conf"  # a checkout (plain or editable)


def builtin_corpus() -> ListConfig:
    """The corpus a run trains on when no data.paths is given: this project's docs, sources and sample files.

    From a checkout: docs/, llm/ and data/sample/. From an installed wheel: the package's own sources and configs.
    """
    root = PACKAGE_DIR.parent
    candidates = [root / "docs", PACKAGE_DIR, root / "data" / "sample"]
    if not (root / "conf" / "train.yaml").is_file():  # not a checkout: only the package itself is ours
        candidates = [PACKAGE_DIR]
    return ListConfig([str(p) for p in candidates if p.exists()])  # a config node: OmegaConf.resolve keeps it


def builtin_chats() -> str:
    """The conversations experiment=sft reads when no data.paths is given: data/chat/example.jsonl of a checkout."""
    example = PACKAGE_DIR.parent / "data" / "chat" / "example.jsonl"
    if not example.is_file():
        raise ConfigError("data.paths: give your conversations, e.g. 'data.paths=[\"chats.jsonl\"]' (docs/chat.md)")
    return str(example)


def register_resolvers() -> None:
    """Resolvers the YAML files use. Safe to call more than once."""
    resolvers = {
        "builtin_corpus": builtin_corpus,  # ${builtin_corpus:} -> the built-in corpus folders
        "builtin_chats": builtin_chats,  # ${builtin_chats:} -> the example conversations
        "cuda_devices": lambda: max(1, _cuda_device_count()),  # ${cuda_devices:} -> visible GPUs, at least 1
        "stdlib": lambda: sysconfig.get_paths()["stdlib"],  # ${stdlib:} -> this Python's standard library
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def run_command(
    name: str, job: Callable[[DictConfig], object], exits: Mapping[type[Exception], int] | None = None
) -> None:
    """The command line of every entry point: Hydra reads conf/<name>.yaml with the overrides of sys.argv and calls
    job(cfg). A ConfigError (and each exception of `exits`) is one line on stderr, logged as `llm.<name>`, and that
    exit status (a ConfigError's 2), no traceback; in a multirun it is raised instead, so the sweep goes on and
    reports the failed job at its end. The job is named `name`, as Hydra names it after a module `llm.<name>`."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    codes = {ConfigError: 2, **(exits or {})}
    log = logging.getLogger(f"llm.{name}")

    def task(cfg: DictConfig) -> object:
        try:
            return job(cfg)
        except tuple(codes) as e:
            log.error("%s", e)
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise
            sys.exit(next(code for kind, code in codes.items() if isinstance(e, kind)))

    task.__module__ = f"llm.{name}"  # Hydra's job name: the last part of the task's module
    register_resolvers()
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=name)(task)()


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def model_preset(name: str, **overrides) -> GPTConfig:
    """conf/model/NAME.yaml as a GPTConfig, without Hydra (tests, benchmarks, worked examples)."""
    from llm.model import GPTConfig  # here: ingest workers read the configs without importing torch

    path = config_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"model={name}: no such preset; choose one of {presets}")
    node = OmegaConf.to_container(OmegaConf.load(path).config)
    node.pop("_target_", None)
    return GPTConfig(**{**node, **overrides})
