"""Train a GPT on your documents: `python train.py [overrides]`. See conf/train.yaml for every key.

This file only composes: it builds the data, the model, the callbacks, the loggers and the trainer
from the Hydra config, and calls fit.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import llm.config  # noqa: F401  (registers the ${repo:} resolver)
from llm.checkpoint import find_checkpoint
from llm.training.precision import resolve_precision

log = logging.getLogger("llm.train")


def train(cfg: DictConfig) -> dict[str, float]:
    os.environ.setdefault("WANDB_MODE", "offline")  # wandb never phones home unless you ask for it
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    (out / "config.yaml").write_text(resolved)
    log.info("config:\n%s", resolved)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    module.run_config = resolved
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values()]
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision)
    n = module.net.num_params()
    log.info("model: %s parameters (%.2fM), precision %s", f"{n:,}", n / 1e6, precision)

    ckpt_path = find_checkpoint(cfg.ckpt_path, cfg.paths.outputs_root) if cfg.get("ckpt_path") else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and ckpt_cb.last_model_path:
        print(f"checkpoint: {ckpt_cb.last_model_path}")
        if ckpt_cb.best_model_path:
            print(f"best ({ckpt_cb.monitor}={float(ckpt_cb.best_model_score):.4f}): {ckpt_cb.best_model_path}")
        print(f"generate:   python infer.py ckpt_path={ckpt_cb.last_model_path} prompt='def '")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("val/loss")  # what a sweeper minimises


if __name__ == "__main__":
    main()
