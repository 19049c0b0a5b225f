"""Scale-out on CPU: DDP, sweeps under DDP, exact resume after SIGKILL, non-finite loss, wandb offline."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm.errors import ConfigError
from llm.training.callbacks import NonFiniteLossError
from llm.training.distributed import check_shared_run_dir
from llm.training.gpu_slots import claim_device
from llm.training.module import LitGPT
from tests.conftest import TINY, compose_train
from train import train

ROOT = Path(__file__).resolve().parent.parent


def run_train(args: list[str], tmp_path: Path, corpus: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    flags = [a for a in args if a == "-m"]  # Hydra's flags go before the overrides
    args = [a for a in args if a != "-m"]
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *flags,
        *TINY,
        f"data.paths=[{corpus}]",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.outputs_root={tmp_path / 'outputs'}",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights_bit_for_bit(tmp_path, corpus):
    common = [
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "callbacks.last.every_n_train_steps=2",
        "trainer.deterministic=true",
        "model.config.dropout=0.1",
    ]  # dropout on: the random draws must resume too
    run_train([*common, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path, corpus)
    killed = run_train(
        [
            *common,
            f"hydra.run.dir={tmp_path / 'b'}",
            "+callbacks.kill._target_=tests.helpers.KillAtStep",
            "+callbacks.kill.step=5",
        ],
        tmp_path,
        corpus,
        check=False,
    )
    assert killed.returncode == -9  # SIGKILL: no clean-up ran
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    run_train([*common, f"hydra.run.dir={tmp_path / 'c'}", f"ckpt_path={tmp_path / 'b'}"], tmp_path, corpus)
    a, c = final_weights(tmp_path / "a"), final_weights(tmp_path / "c")
    assert a.keys() == c.keys()
    for name in a:
        assert torch.equal(a[name], c[name]), name


@pytest.mark.slow
def test_multirun_under_ddp_runs_each_job_once_with_one_lr_per_job(tmp_path, corpus):
    sweep = tmp_path / "sweep"
    extra = tmp_path / "my_conf" / "experiment"  # a config folder of the user's: every rank must find it too
    extra.mkdir(parents=True)
    (extra / "mine.yaml").write_text("# @package _global_\noptim:\n  beta2: 0.99\n")
    run_train(
        [
            "-m",
            "optim.lr=1e-3,3e-4",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            f"hydra.sweep.dir={sweep}",
            f"hydra.searchpath=[file://{extra.parent}]",
            "experiment=mine",
        ],
        tmp_path,
        corpus,
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]  # exactly two jobs: no rank ran a sweep of its own
    for job, lr in zip(jobs, ["0.001", "0.0003"], strict=True):
        logs = {p.name: p.read_text() for p in job.glob("*.log")}
        assert set(logs) == {"train.log", "train_ddp_process_1.log"}
        assert f"rank 0/2: optim.lr={lr} " in logs["train.log"]
        assert f"rank 1/2: optim.lr={lr} " in logs["train_ddp_process_1.log"]
        assert (job / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_a_diverging_job_does_not_end_the_sweep(tmp_path, corpus):
    sweep = tmp_path / "sweep"
    proc = run_train(
        ["-m", "optim.lr=1e30,1e-3", "trainer.max_steps=12", f"hydra.sweep.dir={sweep}"], tmp_path, corpus, check=False
    )
    assert proc.returncode != 0  # the sweep still reports the failed job ...
    assert "loss became" in proc.stderr
    assert (sweep / "1" / "checkpoints" / "last.ckpt").exists()  # ... after the next job ran


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_train_one_run_each_rank_on_its_own_shard(tmp_path, corpus):
    """docs/scaling.md's torchrun recipe on one machine: two "nodes" meet at 127.0.0.1 (c10d), one CPU rank each."""
    run_dir, shards = tmp_path / "outputs" / "train" / "my-run", tmp_path / "shards"
    rendezvous = f"--rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:{free_port()} --rdzv-id=two-nodes"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", *rendezvous.split()]
    ddp = "trainer=ddp trainer.accelerator=cpu trainer.devices=1 trainer.num_nodes=2 trainer.max_steps=3"
    train_args = [
        *TINY,
        *ddp.split(),
        f"data.paths=[{corpus}]",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.outputs_root={tmp_path / 'outputs'}",
        "+callbacks.shard._target_=tests.helpers.RecordShard",
        f"+callbacks.shard.out={shards}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    nodes = []
    for log in logs:
        with log.open("w") as out:  # a file, not a pipe: a node blocked on a full pipe would stall the other
            nodes.append(
                subprocess.Popen(
                    [*torchrun, str(ROOT / "train.py"), *train_args],
                    cwd=tmp_path,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    ranks = [json.loads((shards / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["global_rank"], r["world_size"], r["num_nodes"]) for r in ranks] == [(0, 2, 2), (1, 2, 2)]
    assert {r["node_rank"] for r in ranks} == {0, 1}  # c10d gave each node its own rank
    assert all(r["rows_match"] for r in ranks)  # the indices name the windows each rank really trained on
    seen = [{tuple(key) for key in r["indices"]} for r in ranks]  # (epoch, window) keys
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == 3 * 4  # 3 steps x batch 4 on each rank
    assert not seen[0] & seen[1]  # each rank on its own shard of the epoch

    assert {p.parent for p in tmp_path.rglob("train.log")} == {run_dir}  # one run folder for both nodes
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert [p.relative_to(run_dir) for p in checkpoints if p.name == "last.ckpt"] == [Path("checkpoints/last.ckpt")]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3


def test_torchrun_needs_one_run_folder_for_all_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "2")
    compose_train(tmp_path)
    with pytest.raises(
        ConfigError, match="hydra.run.dir must be given under torchrun.*hydra.run.dir=outputs/train/my-run"
    ):
        check_shared_run_dir()
    compose_train(tmp_path, [f"hydra.run.dir={tmp_path / 'shared'}"])
    check_shared_run_dir()  # given on the command line: the same on every rank


@pytest.mark.slow
def test_optuna_search_runs_trials(tmp_path, corpus):
    sweep = tmp_path / "sweep"
    trials = ["hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2"]
    proc = run_train(["-m", "hparams_search=optuna", *trials, f"hydra.sweep.dir={sweep}"], tmp_path, corpus)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "optim.lr" in results and "best_value" in results, proc.stdout[-2000:]


@pytest.mark.parametrize("save_every", [2, 100])
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(train_cfg, monkeypatch, save_every):
    """Losses are read every 10 steps, before a save and at the end: the first NaN is still named exactly."""
    step = LitGPT.training_step

    def poisoned(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 3 else loss

    monkeypatch.setattr(LitGPT, "training_step", poisoned)
    every = [f"callbacks.last.every_n_train_steps={save_every}", f"trainer.val_check_interval={save_every}"]
    cfg = train_cfg("trainer.max_steps=8", *every)  # 100: no save and no validation before the end
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 4") as e:
        train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if save_every == 100:  # caught when training ended, before the final save
        assert "none yet" in str(e.value) and not list(last.parent.glob("*.ckpt"))
        return
    assert str(last) in str(e.value)  # caught by the save at step 4
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_wandb_offline_run_keeps_its_history(train_cfg):
    cfg = train_cfg(
        "logger=wandb", "trainer.max_steps=4", "trainer.log_every_n_steps=1", "callbacks.samples.every_n_steps=2"
    )
    train(cfg)
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history_file = next(runs[0].glob("run-*.wandb"))
    for _ in range(50):  # wandb's writer is a separate process: let it flush what finish() handed over
        history = history_file.read_bytes()
        if b"val/loss" in history:
            break
        time.sleep(0.2)
    assert b"train/loss" in history and b"val/loss" in history and b"val/bpb" in history and b"samples" in history
    assert list(runs[0].glob("files/media/images/attention/layer0_*.png"))  # heatmaps
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["wandb_run_id"] in runs[0].name  # a resume continues this run


def test_one_job_per_gpu_claims_distinct_devices(tmp_path):
    with claim_device(2, tmp_path) as a, claim_device(2, tmp_path) as b:
        assert {a, b} == {0, 1}
    with claim_device(2, tmp_path) as c:
        assert c == 0  # released on exit
    with pytest.raises(ValueError, match="needs CUDA GPUs"), claim_device(0, tmp_path):
        pass  # no GPU: a clear error, not a wait for a device that never comes


def test_a_save_that_dies_midway_leaves_last_ckpt_whole(train_cfg, monkeypatch):
    """LastCheckpoint saves at step 2, then its save at step 4 dies half-written: last.ckpt stays step 2's, whole."""
    cfg = train_cfg("trainer.max_steps=4", "callbacks.last.every_n_train_steps=2", "trainer.val_check_interval=100")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    real_save = torch.save
    saves: list[bytes] = []  # last.ckpt as it was on disk when each save began

    def dies_on_second_save(obj, f, *args, **kwargs):
        if not Path(getattr(f, "name", "")).name.startswith(".last.ckpt."):
            return real_save(obj, f, *args, **kwargs)
        saves.append(last.read_bytes() if last.exists() else b"")
        if len(saves) == 1:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_on_second_save)
    with pytest.raises(OSError, match="disk full"):
        train(cfg)
    assert len(saves) == 2 and saves[1]  # the second save found step 2's checkpoint in place ...
    assert last.read_bytes() == saves[1]  # ... and left it byte for byte
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 2 and "LastCheckpoint" in ckpt["callbacks"]  # written by the project's callback
    assert list(last.parent.iterdir()) == [last]  # no half-written file beside it
