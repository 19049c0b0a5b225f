"""Hydra/OmegaConf glue: resolvers the YAML files use. Imported by train.py, infer.py and the tests."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from omegaconf import OmegaConf

from llm.model import GPTConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def register_resolvers() -> None:
    """${repo:docs} -> absolute path of docs/ in this repository, whatever the working directory."""
    if not OmegaConf.has_resolver("repo"):
        OmegaConf.register_new_resolver("repo", lambda sub="": str(REPO_ROOT / sub))
    if not OmegaConf.has_resolver("cuda_devices"):  # ${cuda_devices:} -> how many GPUs are visible (at least 1)
        OmegaConf.register_new_resolver("cuda_devices", lambda: max(1, _cuda_device_count()))
    if not OmegaConf.has_resolver("stdlib"):  # ${stdlib:} -> this Python's standard library folder
        OmegaConf.register_new_resolver("stdlib", lambda: sysconfig.get_paths()["stdlib"])


register_resolvers()


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def model_preset(name: str, **overrides) -> GPTConfig:
    """conf/model/NAME.yaml as a GPTConfig, without Hydra (benchmarks, worked examples)."""
    node = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{name}.yaml").config)
    node.pop("_target_", None)
    return GPTConfig(**{**node, **overrides})
