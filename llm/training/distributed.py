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

from llm.errors import ConfigError

log = logging.getLogger(__name__)

LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")  # set by Lightning's launcher


CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# Hydra overrides that belong to the sweep, or that Lightning's launcher sets for each rank itself
SWEEP_ONLY = (
    "hydra.mode=",
    "hydra.sweep.",
    "hydra.sweeper.",
    "hydra/sweeper=",
    "hydra.launcher.",
    "hydra/launcher=",
    "hydra.run.dir=",
    "hydra.job.name=",
    "hydra.output_subdir=",
)


def config_flags(argv: list[str]) -> list[str]:
    """Hydra's --config-path/--config-name/--config-dir flags (and short forms) of a command line, with values."""
    kept, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            kept += argv[i : i + 2]
            i += 1
        elif arg.startswith(tuple(f"{f}=" for f in CONFIG_FLAGS)):
            kept.append(arg)
        i += 1
    return kept


def pin_command_line_to_job() -> None:
    """Under a Hydra multirun, make re-launched ranks run this job only. No-op otherwise."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    own = [o for o in hydra_cfg.overrides.hydra if not o.startswith(SWEEP_ONLY)]  # hydra.searchpath=..., say
    # no -m: the child ranks run a single job, with the same config source and this job's values
    sys.argv = [sys.argv[0], *config_flags(sys.argv[1:]), *own, *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir  # Lightning passes this as hydra.run.dir
    log.debug("DDP ranks will run: %s", " ".join(sys.argv))


def check_shared_run_dir() -> None:
    """Under torchrun each rank composes its own config: a run folder named by the time would differ per rank."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    if not HydraConfig.initialized() or HydraConfig.get().mode == RunMode.MULTIRUN:
        return
    if not any(o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra):
        raise ConfigError(
            "hydra.run.dir must be given under torchrun: every rank writes into the same run folder, and the "
            "default is named by the time each rank started; e.g. hydra.run.dir=outputs/train/my-run"
        )


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
