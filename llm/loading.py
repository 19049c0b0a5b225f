"""What infer.py, serve.py and llm.evaluate generate with: one of our checkpoints, or a Hugging Face model folder.

`ckpt_path` is a .ckpt file, a run folder or `last` (llm/checkpoint.py), or a folder with a Hugging Face model's
config.json: its weights converted as `init_from=` converts them (llm/init_from.py), with its tokenizer and chat
template, so an instruct model on disk answers (and answers from your documents) without a training run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer

from llm.chat_template import ChatTemplate
from llm.checkpoint import CHAT_TEMPLATE, find_checkpoint, load_checkpoint
from llm.model import GPT

log = logging.getLogger(__name__)


class Loaded(NamedTuple):
    model: GPT
    tokenizer: Tokenizer
    device: torch.device
    chat_template: ChatTemplate  # the model's: the plain-text one for a base without one


def hugging_face_folder(spec: object) -> Path | None:
    """spec as a Hugging Face model folder (one with a config.json), else None."""
    path = Path(str(spec)).expanduser()
    return path if path.is_dir() and (path / "config.json").is_file() else None


def load(cfg: DictConfig) -> Loaded:
    """The model of cfg.ckpt_path on cfg.device in cfg.dtype, its tokenizer, the device and its chat template."""
    # Here, not at the top: training writes checkpoints and never loads the sampler package
    from llm.sampler.device import resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    folder = hugging_face_folder(cfg.ckpt_path)
    if folder is not None:
        from llm.init_from import model_for, open_start

        start = open_start(str(folder), None)
        model, tokenizer, template = model_for(start), start.tokenizer, start.chat_template or ChatTemplate.plain()
        path = folder
    else:
        path = find_checkpoint(cfg.ckpt_path, cfg.paths.outputs_root)
        model, tokenizer, ckpt = load_checkpoint(path)
        template = ChatTemplate.from_dict(ckpt.get(CHAT_TEMPLATE))
    model.to(device=device, dtype=dtype)
    log.info("loaded %s (%.2fM parameters) on %s", path, model.num_params() / 1e6, device)
    return Loaded(model, tokenizer, device, template)
