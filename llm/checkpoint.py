"""Find and load checkpoints. A checkpoint carries the model config and the tokenizer: nothing else is needed."""

from __future__ import annotations

import zipfile
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


def damaged(path: Path) -> str | None:
    """Why `path` cannot be a whole checkpoint ("is empty", "is truncated ..."), or None when it may be one.

    torch.save writes a zip archive whose directory is at the end of the file: a file cut short has none."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        return f"is truncated or not a checkpoint ({size:,} bytes, no zip directory at its end)"
    return None


def previous_good(path: Path) -> Path | None:
    """The newest other .ckpt in the same folder that is whole, if any."""
    others = sorted((p for p in path.parent.glob("*.ckpt") if p != path), key=lambda p: p.stat().st_mtime)
    return next((p for p in reversed(others) if damaged(p) is None), None)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint (memory-mapped), or a ConfigError that says why it is not one of ours."""
    path = Path(path)
    why = damaged(path)
    if why is not None:
        good = previous_good(path)
        hint = f"the previous good one is ckpt_path={good}" if good else "no whole checkpoint beside it"
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint: it {why}; {hint}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:  # damaged inside, not a checkpoint, a pickle we refuse to execute
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint: {reason}") from e
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
