"""Generate text from a trained checkpoint: `python infer.py ckpt_path=last prompt="def "`.

The generated text goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import logging
import sys

import hydra
import torch
from omegaconf import DictConfig

import llm.config  # noqa: F401  (registers the ${repo:} resolver)
from llm.checkpoint import find_checkpoint, load_checkpoint
from llm.sampler import generate

log = logging.getLogger("llm.infer")


def infer(cfg: DictConfig) -> str:
    path = find_checkpoint(cfg.ckpt_path, cfg.paths.outputs_root)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, _ = load_checkpoint(path)
    model.to(device)
    log.info("loaded %s (%.2fM parameters) on %s", path, model.num_params() / 1e6, device)
    return generate(model, tokenizer, cfg.prompt, max_new_tokens=cfg.max_new_tokens)


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    try:
        text = infer(cfg)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        sys.exit(2)
    sys.stdout.write(cfg.prompt + text + "\n")


if __name__ == "__main__":
    main()
