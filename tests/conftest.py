"""Shared fixtures: a tiny corpus and a composed, CPU-only, tiny training config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from llm.config import config_dir, register_resolvers

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tiny models are latency-bound: one thread is faster and immune to a busy machine's oversubscription.
torch.set_num_threads(1)

register_resolvers()
CONF_DIR = str(config_dir())

TINY = [
    "model.config.n_layer=2",
    "model.config.n_embd=32",
    "model.config.n_head=2",
    "model.config.n_kv_head=1",
    "model.config.block_size=32",
    "model.config.vocab_size=320",
    "data.batch_size=4",
    "trainer.accelerator=cpu",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "optim.warmup_steps=1",
]


# tests/test_doc_commands.py counts the docs' command lines it ran and composed here; printed after the run
DOC_COMMANDS = pytest.StashKey[dict]()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    counts = config.stash.get(DOC_COMMANDS, None)
    if counts is None:
        return
    shells = " and ".join(counts["shells"])
    terminalreporter.write_line(
        f"docs command lines: ran {counts['ran']}, composed {counts['composed']} (through {shells}); "
        f"composed only, not run here: {len(counts['not_in_ci'])}"
    )
    for line_id, reason in sorted(counts["not_in_ci"].items()):
        terminalreporter.write_line(f"  {line_id}: {reason}")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Twelve small documents of prose and code."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(8):
        (root / f"note{i}.txt").write_text(f"Note {i}. " + "The quick brown fox jumps over the lazy dog. " * (20 + i))
    for i in range(4):
        (root / f"mod{i}.py").write_text(
            f"def add{i}(a, b):\n    # adds two numbers\n    return a + b + {i}\n\n\nclass K{i}:\n    pass\n" * 6
        )
    return root


def compose_train(
    tmp_path: Path, overrides: list[str] = (), corpus: Path | None = None, tiny: bool = True
) -> DictConfig:
    """The train config as `python train.py` would see it, with outputs under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        data = [f"data.paths=[{corpus}]"] if corpus is not None else []
        cfg = compose("train", overrides=[*(TINY if tiny else []), *data, *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.paths.outputs_root = str(tmp_path)
        del cfg.hydra
    return cfg


@pytest.fixture
def train_cfg(tmp_path: Path, corpus: Path):
    def make(*overrides: str) -> DictConfig:
        return compose_train(tmp_path, list(overrides), corpus)

    return make


def make_datamodule(tmp_path: Path, paths, **overrides):
    """A TextDataModule built as train.py builds it: conf/data/default.yaml's values, with overrides."""
    from llm.train import build

    cfg = compose_train(tmp_path / "compose")
    folders = {"out_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    return build(cfg.data, paths=paths, **{**folders, **overrides})
