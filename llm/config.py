"""Hydra/OmegaConf glue: resolvers the YAML files use. Imported by train.py, infer.py and the tests."""

from __future__ import annotations

import logging
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from llm.model import GPTConfig

if TYPE_CHECKING:
    from llm.training.optim import OptimConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("llm.train")


def register_resolvers() -> None:
    """${repo:docs} -> absolute path of docs/ in this repository, whatever the working directory."""
    if not OmegaConf.has_resolver("repo"):
        OmegaConf.register_new_resolver("repo", lambda sub="": str(REPO_ROOT / sub))
    if not OmegaConf.has_resolver("cuda_devices"):  # ${cuda_devices:} -> how many GPUs are visible (at least 1)
        OmegaConf.register_new_resolver("cuda_devices", lambda: max(1, _cuda_device_count()))
    if not OmegaConf.has_resolver("stdlib"):  # ${stdlib:} -> this Python's standard library folder
        OmegaConf.register_new_resolver("stdlib", lambda: sysconfig.get_paths()["stdlib"])


register_resolvers()


def check_trainer(trainer: Mapping, optim: Mapping) -> None:
    """Trainer values that Lightning would reject only deep inside fit, after ingest and tokenizing."""
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"trainer.accumulate_grad_batches={accumulate!r} must be a whole number, at least 1")
    interval = trainer.get("val_check_interval")
    if interval is not None and (interval <= 0 or (isinstance(interval, float) and interval > 1)):
        raise ValueError(
            f"trainer.val_check_interval={interval!r} must be a number of steps (>= 1) "
            "or a fraction of an epoch in (0, 1]"
        )
    max_steps = trainer.get("max_steps", -1)
    if max_steps is not None and (max_steps == 0 or max_steps < -1):
        raise ValueError(f"trainer.max_steps={max_steps} must be at least 1, or -1 for no limit")
    warmup = optim.get("warmup_steps", 0)
    if max_steps is not None and max_steps > 0 and warmup >= max_steps:
        log.warning("optim.warmup_steps=%d >= trainer.max_steps=%d: the learning rate never reaches optim.lr",
                    warmup, max_steps)  # fmt: skip


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def model_preset(name: str, **overrides) -> GPTConfig:
    """conf/model/NAME.yaml as a GPTConfig, without Hydra (benchmarks, worked examples)."""
    node = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{name}.yaml").config)
    node.pop("_target_", None)
    return GPTConfig(**{**node, **overrides})


def optim_preset(name: str, **overrides) -> OptimConfig:
    """conf/optim/NAME.yaml as an OptimConfig, without Hydra (benchmarks, tests); muon={...} replaces that node."""
    from llm.training.optim import OptimConfig, make_config  # llm.training imports Lightning: on use only

    node = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "optim" / f"{name}.yaml"))
    return make_config(OptimConfig, {**node, **overrides}, "optim")
