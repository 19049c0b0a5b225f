"""Nothing lost: files written whole or not at all, a kill during a checkpoint save on any filesystem."""

import contextlib
import os
import random
import shutil
import signal
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch

from llm.atomic import atomic_open, is_temp, remove_stale_temps, write_text
from llm.checkpoint import read_checkpoint
from llm.errors import ConfigError
from llm.train import build
from tests.conftest import compose_train
from train import train


def test_atomic_open_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]  # the temporary went too
    with atomic_open(target, "w") as f:
        f.write("new")
        assert [p for p in tmp_path.iterdir() if is_temp(p)]  # written beside the target, not in TMPDIR
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]
    stale = tmp_path / ".last.ckpt.0123abcd.partial"
    stale.write_bytes(b"x")
    assert remove_stale_temps(tmp_path, older_than_s=3600) == []  # a young one may be another writer's
    assert remove_stale_temps(tmp_path) == [stale] and list(tmp_path.iterdir()) == [target]


def test_an_empty_or_truncated_checkpoint_is_named_with_the_previous_good_one(train_cfg):
    cfg = train_cfg("trainer.max_steps=2", "trainer.val_check_interval=1")
    train(cfg)
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    last = folder / "last.ckpt"
    (best,) = folder.glob("best-*.ckpt")
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        ConfigError, match=rf"^ckpt_path={last} is not a readable checkpoint: it is truncated .*{best}$"
    ):
        read_checkpoint(last)
    last.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"it is empty \(0 bytes\); the previous good one is ckpt_path=.*best-"):
        train(train_cfg("trainer.max_steps=4", f"ckpt_path={last}"))
    best.unlink()
    with pytest.raises(ConfigError, match="it is empty .*; no whole checkpoint beside it$"):
        read_checkpoint(last)


def _child(cfg, tmpdir: Path) -> None:
    """The body of a forked training process: TMPDIR on another filesystem, then train; never returns."""
    code = 1
    try:
        os.environ["TMPDIR"] = str(tmpdir)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again
        train(cfg)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _fork_train(cfg, tmpdir: Path) -> int:
    pid = os.fork()
    if pid == 0:
        _child(cfg, tmpdir)
    return pid


@pytest.mark.slow
def test_kills_during_saves_with_tmpdir_on_another_filesystem_lose_nothing(tmp_path, corpus):
    """SIGKILL 20 times, each time when a checkpoint save has begun (a temporary file appeared in the
    checkpoint folder), at a random moment in it; resume after each. Every last.ckpt loads, the final
    weights equal those of an unbroken run bit for bit, and no temporary file is left anywhere."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's folder, for TMPDIR")
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    tmpdir = Path(tempfile.mkdtemp(dir=shm, prefix="llm-kill-test-"))
    common = [
        "trainer.max_steps=24",
        "trainer.val_check_interval=5",
        "callbacks.last.every_n_train_steps=1",
        "model.config.dropout=0.1",  # the random draws must resume too
        "model.config.n_embd=16",
        "model.config.n_head=1",
    ]
    rng = random.Random(19)
    children: list[int] = []
    try:
        unbroken = compose_train(tmp_path / "unbroken", common, corpus)
        build(unbroken.data).prepare_data()  # ingest and tokens cached here: the forked runs start no workers
        _, status = os.waitpid(_fork_train(unbroken, tmpdir), 0)
        assert os.waitstatus_to_exitcode(status) == 0

        run = tmp_path / "killed"
        folder = run / "run" / "checkpoints"
        kills, mid_save, steps = 0, 0, []
        for _ in range(60):
            last = folder / "last.ckpt"
            cfg = compose_train(run, [*common, f"ckpt_path={last}"] if last.exists() else common, corpus)
            cfg.paths.cache_dir = str(tmp_path / "unbroken" / "cache")  # the same token files
            if kills == 20:
                _, status = os.waitpid(_fork_train(cfg, tmpdir), 0)
                assert os.waitstatus_to_exitcode(status) == 0
                break
            pid = _fork_train(cfg, tmpdir)
            children.append(pid)
            saves_to_skip, seen = rng.randrange(3), set()
            while True:  # poll for the temporary file of a save in progress
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    pytest.fail("the run ended before it was killed: raise trainer.max_steps")
                temps = {p.name for p in folder.iterdir() if is_temp(p)} if folder.is_dir() else set()
                if temps - seen:
                    seen |= temps
                    if len(seen) > saves_to_skip:
                        break
                time.sleep(1e-4)  # a save (write, fsync, rename) takes milliseconds
            time.sleep(rng.random() * 1e-3)  # a random moment within the save (a few ms for this model)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            kills += 1
            mid_save += any(is_temp(p) for p in folder.iterdir())  # the kill cut a save short
            if last.exists():
                steps.append(read_checkpoint(last)["global_step"])  # loads, whole
        assert kills == 20
        assert mid_save >= 10, f"only {mid_save} kills of 20 landed inside a save"
        assert steps == sorted(steps) and steps[-1] < 24  # progress, resumed every time, never lost
        a = torch.load(tmp_path / "unbroken" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
        b = torch.load(folder / "last.ckpt", weights_only=True)
        assert a["global_step"] == b["global_step"] == 24
        for name in a["state_dict"]:
            assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
        left = [p for p in run.rglob("*") if is_temp(p) or p.name.endswith(".tmp")]
        assert left == [] and list(tmpdir.iterdir()) == []
    finally:
        for pid in children:  # a failed assertion leaves no training process behind
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        shutil.rmtree(tmpdir)
