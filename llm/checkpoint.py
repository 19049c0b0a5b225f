"""The checkpoint format, in one place: what training adds to Lightning's checkpoint, and every reader of it.

A checkpoint is the dict Lightning saves, as one torch.save zip archive (write_checkpoint: atomically, through
llm/training/checkpoint_io.py), with these entries:

- `state_dict` (Lightning): the LitGPT's weights, the network's under `net.<name>` (`net._orig_mod.<name>`
  when the network was compiled as a wrapper); `global_step` (Lightning): optimizer steps taken. Lightning
  adds the optimizer, scheduler, loop and datamodule states, which only a resume reads.
- MODEL_CONFIG: GPTConfig.to_dict(), the model's shape; TOKENIZER: the tokenizer as its tokenizer.json
  string; CONFIG: the run's resolved YAML, when the run had one. add_entries writes these three (called by
  LitGPT.on_save_checkpoint): with them a checkpoint alone is enough to sample, export or resume.
- WANDB_RUN_ID: the wandb run's id, when the run logged to wandb (llm/training/wandb_extras.py).
- CHAT_TEMPLATE: the chat template the model was fine-tuned with (llm/chat_template.py), when it was; a
  checkpoint without one chats through the plain-text template.
- LORA: a run with LoRA adapters (llm/lora.py): `r`, `alpha`, `dropout`, `targets` and `base` (init_from, its kind,
  where its weights are, their sha256). `state_dict` then holds the adapters only; load_checkpoint reads the base,
  checks its fingerprint and merges the adapters into its weights.

A checkpoint's run folder is <run> for <run>/checkpoints/x.ckpt, else the folder it is in (run_folder).
"""

from __future__ import annotations

import zipfile
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

import torch
from tokenizers import Tokenizer

from llm.atomic import atomic_open
from llm.chat_template import ChatTemplate
from llm.errors import ConfigError
from llm.lora import fingerprint, merge
from llm.model import GPT, GPTConfig
from llm.tokenizer import load_tokenizer

MODEL_CONFIG = "model_config"  # GPTConfig.to_dict()
TOKENIZER = "tokenizer"  # the tokenizer.json string
CONFIG = "config"  # the run's resolved YAML, when it had one
WANDB_RUN_ID = "wandb_run_id"  # when the run logged to wandb
CHAT_TEMPLATE = "chat_template"  # ChatTemplate.to_dict(), when the model was fine-tuned on conversations
LORA = "lora"  # LoraConfig.to_dict() and `base`, when the run trained LoRA adapters on a frozen base
STATE_DICT = "state_dict"  # Lightning's: the module's weights, the network's under WEIGHTS_PREFIX
GLOBAL_STEP = "global_step"  # Lightning's: optimizer steps taken
WEIGHTS_PREFIX = "net."  # LitGPT.net
REQUIRED = (MODEL_CONFIG, TOKENIZER, STATE_DICT)  # what a checkpoint needs to be loaded
# GPTConfig switches added after checkpoints were written: a saved config without one had it off, and is read so
# (saved_model_config); a new run's preset names each, like every other switch.
ADDED_SWITCHES = {"value_embeds": 0, "unet_skips": False}


def add_entries(
    checkpoint: dict,
    model_config: GPTConfig,
    tokenizer: Tokenizer | None,
    run_config: str | None,
    chat_template: dict | None = None,
    lora: dict | None = None,
) -> dict:
    """Write what makes a checkpoint self-sufficient into Lightning's checkpoint dict: the model's shape, the
    tokenizer (when there is one), the run's resolved config (when set) and the chat template the model learned
    (when it was fine-tuned on conversations), and what LoRA adapters sit on (when they do). Returns the same dict."""
    checkpoint[MODEL_CONFIG] = model_config.to_dict()
    if tokenizer is not None:
        checkpoint[TOKENIZER] = tokenizer.to_str()
    if run_config is not None:
        checkpoint[CONFIG] = run_config
    if chat_template is not None:
        checkpoint[CHAT_TEMPLATE] = chat_template
    if lora is not None:
        checkpoint[LORA] = lora
    return checkpoint


def write_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """Save `checkpoint` where read_checkpoint reads it: written beside `path` as `.<name>.<random>.partial`,
    fsynced and renamed over it (llm/atomic.py), so a kill at any moment leaves the previous file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        torch.save(checkpoint, f)


def save_model(
    path: str | Path,
    model: GPT,
    tokenizer: Tokenizer | None,
    chat_template: dict | None = None,
    step: int = 0,
) -> Path:
    """A checkpoint of a bare model, as train.py writes one without the training state: its weights under
    WEIGHTS_PREFIX, its shape, its tokenizer (when given) and chat template (when given), `step` as global_step.
    load_checkpoint, infer.py, serve.py and the export read it; a resume needs a checkpoint of train.py's own."""
    state = {WEIGHTS_PREFIX + name: tensor for name, tensor in model.state_dict().items()}
    checkpoint = add_entries({STATE_DICT: state, GLOBAL_STEP: step}, model.config, tokenizer, None, chat_template)
    write_checkpoint(checkpoint, path)
    return Path(path)


def run_folder(ckpt: str | Path) -> Path:
    """The run folder a checkpoint belongs to: <run> for <run>/checkpoints/x.ckpt, else the checkpoint's folder."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


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
    missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ConfigError(f"ckpt_path={path} lacks {missing}: was it written by train.py?")
    return ckpt


class ResumeState(NamedTuple):
    """What the loggers of a resumed run continue from."""

    global_step: int
    wandb_run_id: str | None


def read_resume_state(path: str | Path) -> ResumeState:
    """The checkpoint's step and wandb run id (None when it has none), read once."""
    ckpt = read_checkpoint(path)
    return ResumeState(int(ckpt[GLOBAL_STEP]), ckpt.get(WANDB_RUN_ID))


def saved_model_config(ckpt: dict) -> dict:
    """The checkpoint's GPTConfig keys, with the switches added since it was written at the value it had then."""
    return {**ADDED_SWITCHES, **ckpt[MODEL_CONFIG]}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """(model in eval mode, tokenizer, raw checkpoint) from a training checkpoint; LoRA adapters merged into the
    weights of the base they were trained on."""
    ckpt = read_checkpoint(path, map_location)
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(ckpt[MODEL_CONFIG]) - known)
    try:
        model = GPT(GPTConfig(**saved_model_config(ckpt)))
    except (TypeError, ValueError, ConfigError) as e:
        what = f"keys this version does not know: {unknown}" if unknown else str(e)
        raise ConfigError(
            f"ckpt_path={path}: its model config does not fit this version's model ({what}); load it with the "
            "version that wrote it, or train again"
        ) from e
    # net.<name>; a network compiled as a wrapper saves net._orig_mod.<name>
    state = {}
    for key, value in ckpt[STATE_DICT].items():
        if key.startswith(WEIGHTS_PREFIX):
            state[key.removeprefix(WEIGHTS_PREFIX).removeprefix("_orig_mod.")] = value
    lora = ckpt.get(LORA)
    if lora is None:
        try:
            mismatch = model.load_state_dict(state, strict=False)
            problem = mismatch.missing_keys or mismatch.unexpected_keys
            detail = f"missing {mismatch.missing_keys[:3]}, unexpected {mismatch.unexpected_keys[:3]}"
        except RuntimeError as e:  # a weight of another shape
            problem, detail = True, str(e).strip().splitlines()[-1].strip()
        if problem:
            raise ConfigError(
                f"ckpt_path={path}: its weights do not match the model its config describes ({detail}): it was "
                "written by another version of llm/model.py; load it with that version, or train again"
            )
    else:
        load_base(model, lora["base"], path)
        merge(model, state, lora["alpha"] / lora["r"])
    return model.eval(), load_tokenizer(ckpt[TOKENIZER]), ckpt


def load_base(model: GPT, base: dict, path: str | Path) -> None:
    """Copy the weights of a LoRA checkpoint's base (LORA's `base`) into model, checked against their sha256."""
    where = Path(base["path"])
    named = f"ckpt_path={path} holds LoRA adapters on init_from={base['init_from']}"
    if not where.exists():
        raise ConfigError(f"{named}, whose weights were at {where}: not there any more. Put the base back there")
    if base["kind"] == "checkpoint":
        base_model, _, _ = load_checkpoint(where)  # a base may itself carry adapters: merged
        model.load_state_dict(base_model.state_dict())
    else:  # a Hugging Face folder
        from llm.interop.hf import Pretrained

        Pretrained.open(str(where), None).load_into(model)
    got = fingerprint(model.state_dict())
    if got != base["sha256"]:
        raise ConfigError(
            f"{named}, but the weights at {where} are not the ones they were trained on "
            f"(sha256 {got[:12]}..., trained on {base['sha256'][:12]}...): put that base back, or train again"
        )


def read_chat_template(path: str | Path) -> ChatTemplate:
    """The chat template a checkpoint's model was fine-tuned with; the plain-text one for a model that was not."""
    return ChatTemplate.from_dict(read_checkpoint(path).get(CHAT_TEMPLATE))
