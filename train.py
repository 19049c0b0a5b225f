"""Train a GPT on your documents: `python train.py [overrides]`. See conf/train.yaml for every key.

This file only composes: it builds the data, the model, the callbacks, the loggers and the trainer
from the Hydra config, and calls fit.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from llm.checkpoint import check_resume, find_checkpoint
from llm.config import check_trainer  # (importing llm.config registers the ${repo:} resolver)
from llm.training.callbacks import NonFiniteLossError, last_checkpoint_path
from llm.training.distributed import check_shared_run_dir, job_scope
from llm.training.gpu_slots import claim_device
from llm.training.precision import resolve_precision
from llm.training.wandb_extras import resume_kwargs

log = logging.getLogger("llm.train")
# The DataModule, not the DataLoader, carries the position in the epoch: resuming mid-epoch is exact.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def train(cfg: DictConfig) -> dict[str, float]:
    check_shared_run_dir()
    os.environ.setdefault("WANDB_MODE", "offline")  # wandb never phones home unless you ask for it
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_trainer(cfg.trainer, cfg.optim)
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    cfg.trainer.precision = precision  # config.yaml and the checkpoint record what the run really used
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    (out / "config.yaml").write_text(resolved)
    log.info("config:\n%s", resolved)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    module.run_config = resolved
    ckpt_path = find_checkpoint(cfg.ckpt_path, cfg.paths.outputs_root) if cfg.get("ckpt_path") else None
    if ckpt_path is not None:
        check_resume(ckpt_path, module.net.config)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    loggers = [instantiate(c, **resume_kwargs(c, ckpt_path)) for c in cfg.get("logger", {}).values()]
    n = module.net.num_params()
    log.info("model: %s parameters (%.2fM), precision %s", f"{n:,}", n / 1e6, precision)

    gpu_slot = claim_device(torch.cuda.device_count()) if cfg.get("one_job_per_gpu") else nullcontext()
    with gpu_slot as gpu, job_scope():  # job_scope: DDP ranks of a sweep job run that job only
        devices = {"devices": [gpu]} if gpu is not None else {}
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision, **devices
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    last = last_checkpoint_path(trainer)
    if trainer.is_global_zero and last:
        print(f"checkpoint: {last}")
        best = trainer.checkpoint_callback
        if best is not None and best.best_model_path and best.best_model_score is not None:
            print(f"best ({best.monitor}={float(best.best_model_score):.4f}): {best.best_model_path}")
        print(f"generate:   python infer.py ckpt_path={last} 'prompt=\"def \"'")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except NonFiniteLossError as e:
        log.error("%s", e)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a failed job: the sweep goes on (optuna records a failed trial) and reports it at the end
        sys.exit(1)
    return metrics.get("val/loss")  # what a sweeper minimises


if __name__ == "__main__":
    main()
