"""Find and load checkpoints. A checkpoint carries the model config and the tokenizer: nothing else is needed."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from llm.errors import ConfigError
from llm.model import GPT, GPTConfig
from llm.tokenizer import load_tokenizer


def find_checkpoint(spec: str | Path, outputs_root: str | Path) -> Path:
    """spec: a .ckpt file; a run folder (its checkpoints/last.ckpt); or 'last' (newest last.ckpt under outputs_root)."""
    if str(spec) == "last":
        found = sorted(Path(outputs_root).rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"ckpt_path=last: no last.ckpt under {outputs_root}; train first with python train.py")
        return found[-1]
    path = Path(spec).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"ckpt_path={spec}: no last.ckpt in that folder or its checkpoints/")
    if not path.is_file():
        raise ConfigError(f"ckpt_path={spec}: no such file")
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint (memory-mapped), or a ConfigError that says why it is not one of ours."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:  # truncated file, not a checkpoint, a pickle we refuse to execute
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint: {e}") from e
    missing = [k for k in ("model_config", "tokenizer", "state_dict") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ConfigError(f"ckpt_path={path} lacks {missing}: was it written by train.py?")
    return ckpt


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """(model in eval mode, tokenizer, raw checkpoint) from a training checkpoint."""
    ckpt = read_checkpoint(path, map_location)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    # net.<name>; a network compiled as a wrapper saves net._orig_mod.<name>
    state = {}
    for key, value in ckpt["state_dict"].items():
        if key.startswith("net."):
            state[key.removeprefix("net.").removeprefix("_orig_mod.")] = value
    model.load_state_dict(state)
    return model.eval(), load_tokenizer(ckpt["tokenizer"]), ckpt
