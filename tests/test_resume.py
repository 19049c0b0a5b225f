"""Resume as people expect: `python train.py ckpt_path=last` continues the run in its folder, with its config."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from llm.checkpoint import save_model
from llm.config import model_preset
from llm.errors import ConfigError
from llm.model import GPT
from llm.resume import check_resume, resume_argv, resume_logger_kwargs
from llm.tokenizer import train_tokenizer
from tests.test_scale import ROOT, final_weights, run_train
from train import train


def fake_run(root: Path, overrides: list[str]) -> Path:
    run = root / "outputs" / "train" / "2026-01-01_00-00-00-000000"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    return run


def test_resume_replays_the_runs_overrides_under_the_new_ones(tmp_path, monkeypatch):
    run = fake_run(tmp_path, ["model=small", "trainer.max_steps=100", "data.paths=[/a,/b]"])
    monkeypatch.chdir(tmp_path)
    argv = resume_argv(["ckpt_path=last", "trainer.max_steps=200"])
    assert argv == [
        "model=small",
        "data.paths=[/a,/b]",
        "ckpt_path=last",
        "trainer.max_steps=200",
        f"hydra.run.dir={run.resolve()}",
    ]
    assert resume_argv(["ckpt_path=last", "hydra.run.dir=x"]) == ["ckpt_path=last", "hydra.run.dir=x"]  # DDP ranks
    assert resume_argv(["-m", "ckpt_path=last"]) == ["-m", "ckpt_path=last"]  # sweeps are not resumed this way
    assert resume_argv(["trainer.max_steps=5"]) == ["trainer.max_steps=5"]
    with pytest.raises(ConfigError, match="ckpt_path=last: no last.ckpt under nowhere"):
        resume_argv(["ckpt_path=last", "paths.outputs_root=nowhere"])


def test_a_checkpoint_outside_a_recorded_run_resumes_with_this_command_line_only(tmp_path):
    run = fake_run(tmp_path, ["model=small"])
    (run / ".hydra" / "overrides.yaml").unlink()
    assert resume_argv([f"ckpt_path={run}", "trainer.max_steps=9"]) == [f"ckpt_path={run}", "trainer.max_steps=9"]
    (tmp_path / "loose.ckpt").write_bytes(b"")
    assert resume_argv([f"ckpt_path={tmp_path / 'loose.ckpt'}"]) == [f"ckpt_path={tmp_path / 'loose.ckpt'}"]


def test_the_loggers_continue_from_the_checkpoints_step_and_wandb_run(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    model = GPT(model_preset("tiny", vocab_size=300, n_layer=1, n_embd=16))
    save_model(ckpt, model, train_tokenizer(["hello world"], 300), step=4)
    assert resume_logger_kwargs({"_target_": "llm.training.loggers.CSVLogger"}, ckpt) == {"resume_step": 4}
    tensorboard = {"_target_": "lightning.pytorch.loggers.TensorBoardLogger"}
    assert resume_logger_kwargs(tensorboard, ckpt) == {"purge_step": 4}
    wandb = {"_target_": "lightning.pytorch.loggers.WandbLogger"}
    assert resume_logger_kwargs(wandb, ckpt) == {}  # a run that did not log to wandb starts a new wandb run
    assert resume_logger_kwargs(wandb, None) == {}
    torch.save({**torch.load(ckpt, weights_only=True), "wandb_run_id": "abc123"}, ckpt)
    assert resume_logger_kwargs(wandb, ckpt) == {"id": "abc123", "resume": "allow"}


def test_a_resume_refuses_another_model_shape_or_corpus_by_name(train_cfg, tmp_path):
    cfg = train_cfg("trainer.max_steps=2")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    check_resume(last, train_cfg("trainer.max_steps=4", "model.config.dropout=0.1"))  # dropout may change
    with pytest.raises(ConfigError, match=r"^model.config.n_layer=3 but the checkpoint"):
        check_resume(last, train_cfg("model.config.n_layer=3"))
    with pytest.raises(ConfigError, match=r"^data.val_fraction=0.3 but the checkpoint"):
        check_resume(last, train_cfg("data.val_fraction=0.3"))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ConfigError, match=r"^data.paths=.*other.* but the checkpoint .* the corpus and its tokenizer"):
        check_resume(last, train_cfg(f"data.paths=[{other}]"))


def metrics_rows(run: Path) -> list[dict]:
    """metrics.csv without the wall-clock columns, which differ between any two runs."""
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    return [{k: v for k, v in r.items() if "per_sec" not in k} for r in rows]


@pytest.mark.slow
def test_sigkill_then_ckpt_path_last_alone_ends_where_an_unbroken_run_ends(tmp_path, corpus):
    common = [
        "trainer.max_steps=10",
        "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1",
        "callbacks.last.every_n_train_steps=4",
        "model.config.dropout=0.1",
    ]
    run_train([*common, f"hydra.run.dir={tmp_path / 'unbroken'}"], tmp_path, corpus)
    kill = ["+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=7"]
    killed = run_train([*common, *kill, "paths.outputs_root=outputs"], tmp_path, corpus, check=False)
    assert killed.returncode == -9
    (run,) = (tmp_path / "outputs" / "train").iterdir()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LLM_TEST_KILL": "0"}
    cmd = [sys.executable, str(ROOT / "train.py"), "ckpt_path=last"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (tmp_path / "outputs" / "train").iterdir()] == [run.name]  # the same folder
    unbroken, resumed = final_weights(tmp_path / "unbroken"), final_weights(run)
    assert unbroken.keys() == resumed.keys()
    for name in unbroken:
        assert torch.equal(unbroken[name], resumed[name]), name
    assert metrics_rows(run) == metrics_rows(tmp_path / "unbroken")  # one continuous history, no repeats
