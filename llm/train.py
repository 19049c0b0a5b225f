"""`python train.py [overrides]` (or `python -m llm.train` when installed): train a GPT on your documents.

This module only composes: it builds the data, the model, the callbacks, the loggers and the trainer from
the Hydra config, and calls fit. Every key is in conf/train.yaml and its groups (docs/configuration.md).

Resuming: `python train.py ckpt_path=last` (or a run folder, or a .ckpt file) continues that run in its own
folder with its own overrides; what you add on the command line applies on top (resume.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from llm import provenance
from llm.atomic import write_text
from llm.checkpoint import find_checkpoint, run_folder
from llm.config import check_flag, run_command
from llm.errors import ConfigError
from llm.init_from import Start, lora_resume, open_start, use_lora
from llm.lora import count_parameters, lora_config
from llm.resume import check_resume, resume_argv, resume_logger_kwargs
from llm.training.callbacks import NonFiniteLossError, last_checkpoint_path
from llm.training.checkpoint_io import AtomicCheckpointIO
from llm.training.checks import check_trainer
from llm.training.distributed import check_shared_run_dir, job_scope
from llm.training.gpu_slots import claim_device
from llm.training.loggers import LogHyperparameters, flat_hparams
from llm.training.optim import memory_estimate
from llm.training.precision import resolve_precision

log = logging.getLogger(__name__)
# The DataModule, not the DataLoader, carries the position in the epoch: resuming mid-epoch is exact.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def build(node: DictConfig, **kwargs):
    """hydra's instantiate, with a ConfigError raised inside the target reported as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise


def use_pretrained(cfg: DictConfig, out: Path) -> Start:
    """init_from (llm/init_from.py): the model's shape replaces model.config's shape keys, its tokenizer replaces BPE
    training, and a run on conversations takes its chat template (ChatML, with the markers added, where it has none)."""
    start = open_start(cfg.init_from, cfg.paths.hub_dir, cfg.paths.outputs_root)
    chat = "chat_template" in cfg.data  # the conversations datamodule (experiment=sft)
    if chat:
        start.add_chat_markers()
    tokenizer_file = out / "init_tokenizer.json"
    start.tokenizer.save(str(tokenizer_file))
    with open_dict(cfg):
        cfg.model.config.update(start.model_config)
        cfg.data.tokenizer = str(tokenizer_file)
        if chat:
            template_file = out / "init_chat_template.json"
            write_text(template_file, json.dumps(start.chat_template.to_dict(), indent=1))
            cfg.data.chat_template = str(template_file)
    log.info("init_from: %s (%s): %s", cfg.init_from, start.kind, start.model_config)
    return start


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model the config describes; returns the final logged metrics."""
    check_shared_run_dir()
    os.environ.setdefault("WANDB_MODE", "offline")  # wandb never phones home unless you ask for it
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_trainer(cfg.trainer, cfg.optim)
    one_job_per_gpu = check_flag("one_job_per_gpu", cfg.get("one_job_per_gpu", False))
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    cfg.trainer.precision = precision  # config.yaml and the checkpoint record what the run really used
    ckpt_path = find_checkpoint(cfg.ckpt_path, cfg.paths.outputs_root) if cfg.get("ckpt_path") else None
    lora = lora_config(cfg.get("lora"))
    saved_lora = lora_resume(cfg, lora, ckpt_path)
    pretrained = use_pretrained(cfg, out) if cfg.get("init_from") else None
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    if ckpt_path is not None:
        check_resume(ckpt_path, OmegaConf.create(resolved))  # before any data work
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data)  # each object checks its values as it is built: nothing has run yet
    module = build(cfg.module)
    module.run_config = resolved
    if pretrained is not None and (ckpt_path is None or lora.r):  # a resumed run's checkpoint holds the weights
        pretrained.load_into(module.net)  # (LoRA's: the adapters only)
    if lora.r:
        module.lora = use_lora(module, lora, pretrained, cfg.init_from, saved_lora)
    callbacks = [build(c) for c in cfg.get("callbacks", {}).values()]
    callbacks.append(LogHyperparameters(flat_hparams(cfg)))
    loggers = [build(c, **resume_logger_kwargs(c, ckpt_path)) for c in cfg.get("logger", {}).values()]
    write_text(out / "config.yaml", resolved)
    log.info("config:\n%s", resolved)
    log.info("code: %s", provenance.describe())
    n = module.net.num_params()
    log.info("model: %s parameters (%.2fM), precision %s", f"{n:,}", n / 1e6, precision)
    trainable, total = count_parameters(module.net)
    memory = memory_estimate(module.net, module.optim)
    log.info(
        "trains %s of %s parameters (%.2f%%); expected memory: weights %.2f GiB + gradients %.2f GiB + optimizer "
        "state %.2f GiB = %.2f GiB, activations not counted",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
        *(v / 2**30 for v in memory.values()),
        sum(memory.values()) / 2**30,
    )

    gpu_slot = claim_device(torch.cuda.device_count()) if one_job_per_gpu else nullcontext()
    with gpu_slot as gpu, job_scope():  # job_scope: DDP ranks of a sweep job run that job only
        devices = {"devices": [gpu]} if gpu is not None else {}
        trainer: L.Trainer = build(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            precision=precision,
            plugins=[AtomicCheckpointIO()],  # checkpoints renamed into place in their own folder
            **devices,
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(module.device) / 2**30
            log.info("peak GPU memory: %.2f GiB (torch.cuda.max_memory_allocated)", peak)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    last = last_checkpoint_path(trainer)
    if trainer.is_global_zero and last:
        print(f"checkpoint: {last}")
        best = trainer.checkpoint_callback
        if best is not None and best.best_model_path and best.best_model_score is not None:
            print(f"best ({best.monitor}={float(best.best_model_score):.4f}): {best.best_model_path}")
        print(f"generate:   python infer.py ckpt_path={last} 'prompt=\"def \"'")
        print(f"resume:     python train.py ckpt_path={run_folder(last)} trainer.max_steps=N")
    return metrics


def main() -> None:
    try:
        sys.argv = [sys.argv[0], *resume_argv(sys.argv[1:])]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # what a sweeper minimises: the job's val/loss; a loss gone NaN or inf is exit status 1
    run_command("train", lambda cfg: train(cfg).get("val/loss"), {NonFiniteLossError: 1})


if __name__ == "__main__":
    main()
