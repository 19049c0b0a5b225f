"""Make Lightning's DDP launcher and Hydra multirun agree.

Lightning's `ddp` strategy starts ranks 1..N-1 by re-running the command line. Under `python train.py
-m ...` that command line is the whole sweep, so every extra rank would run its own sweep (and, with
the optuna sweeper, sample its own hyperparameters). Before the trainer launches ranks, we rewrite the
command line to *this job's* overrides and point Hydra's run dir at this job's folder: every rank of a
job then runs exactly that job, with the same values, writing into the same folder. After the job,
the process group and the launcher's environment variables are cleared, so the next job of the sweep
launches its own ranks on a fresh port.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

log = logging.getLogger(__name__)

LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")  # set by Lightning's launcher


def pin_command_line_to_job() -> None:
    """Under a Hydra multirun, make re-launched ranks run this job only. No-op otherwise."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]  # no -m: the child ranks run a single job
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir  # Lightning passes this as hydra.run.dir
    log.debug("DDP ranks will run: %s", " ".join(sys.argv))


@contextmanager
def job_scope() -> Iterator[None]:
    """One training job: pin the command line for DDP, and leave no distributed state behind."""
    argv, env = list(sys.argv), {k: os.environ.get(k) for k in LAUNCHER_ENV}
    pin_command_line_to_job()
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        sys.argv = argv
        for key, value in env.items():  # an external launcher's values (torchrun, SLURM) stay as they were
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
