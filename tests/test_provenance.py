"""What produced a number: the commit and versions in logs and captions; throughput that leaves validation out."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from llm import provenance
from llm.training import callbacks
from llm.training.callbacks import Throughput


def test_provenance_names_a_commit_and_the_versions() -> None:
    line = provenance.describe()
    assert re.fullmatch(r"commit ([0-9a-f]{7,40}(\+changes)?|unknown), python \S+, torch \S+, lightning \S+", line)
    assert torch.__version__ in line


class _Module:
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.logged: list[dict] = []

    def log_dict(self, metrics, rank_zero_only) -> None:
        self.logged.append(metrics)


def test_throughput_leaves_validation_time_out(monkeypatch) -> None:
    """Two steps of 1 s around a 10 s validation: 1,000 tokens per step is 1,000 tokens/s, not 1000 / 11."""
    now = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    cb, module = Throughput(every_n_steps=2), _Module()
    trainer = SimpleNamespace(world_size=1, global_step=0)
    batch = {"input": torch.zeros(10, 100, dtype=torch.long)}
    for step in (1, 2, 3):  # the first batch only starts the clock
        if step == 3:  # a validation between steps 2 and 3
            cb.on_validation_start(trainer, module)
            now[0] += 10.0
            cb.on_validation_end(trainer, module)
        now[0] += 1.0
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, batch, step)
    trainer.global_step = 4
    now[0] += 1.0
    cb.on_train_batch_end(trainer, module, None, batch, 4)
    rates = [m["train/tokens_per_sec"] for m in module.logged]
    assert rates == [1000.0, 1000.0]


def test_validation_before_the_first_step_is_harmless(monkeypatch) -> None:
    cb, module = Throughput(every_n_steps=1), _Module()
    trainer = SimpleNamespace(world_size=1, global_step=0)
    cb.on_validation_start(trainer, module)  # a sanity check: the clock has not started
    cb.on_validation_end(trainer, module)
    assert cb._t0 is None


def test_a_figure_caption_names_the_command_date_and_commit(tmp_path) -> None:
    from tools.plots import command, run_provenance

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model=small\n- data.paths=[a,b]\n- task_name=x y\n")
    (tmp_path / "train.log").write_text(
        "[2026-12-01 10:00:00,000][llm.train][INFO] - config:\n"
        "[2026-12-01 10:00:01,000][llm.train][INFO] - code: commit abc1234, python 3.11.7, torch 2.13.0, "
        "lightning 2.6.6\n"
    )
    assert command(tmp_path) == "python train.py model=small 'data.paths=[a,b]' 'task_name=x y'"
    assert run_provenance(tmp_path) == "2026-12-01, commit abc1234, python 3.11.7, torch 2.13.0, lightning 2.6.6"
    (tmp_path / "train.log").write_text("")  # a run from before the code line: this checkout, today
    assert re.match(r"\d{4}-\d\d-\d\d, commit ", run_provenance(tmp_path))
