"""init_from=PATH: start a run from a trained model instead of random weights.

PATH is one of our own checkpoints (a .ckpt file, a run folder, or "last": the newest run's) or a Hugging Face
model folder (or hub id, llm/interop/hf.py). Either way the run takes the model's shape, its weights, its
tokenizer (instead of training a BPE) and its chat template, when it has one: ours store theirs in the checkpoint
(llm/checkpoint.py), a Hugging Face folder in chat_template.jinja or tokenizer_config.json.

A model to fine-tune on conversations (experiment=sft) needs the chat markers its template writes. Every tokenizer
trained here reserves ChatML's; a checkpoint of ours made before they were reserved gets them added as new ids,
and its embedding grows by the rows they need (the new rows start at the mean of the others), which the log says.

With lora.r > 0 the model's weights stay frozen and LoRA adapters train on them (llm/lora.py): use_lora names the
base in the checkpoint (where it is, its sha256), and lora_resume reads it back on a resume.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict
from tokenizers import Tokenizer

from llm.chat_template import ChatTemplate
from llm.checkpoint import CHAT_TEMPLATE, LORA, MODEL_CONFIG, find_checkpoint, load_checkpoint, read_checkpoint
from llm.errors import ConfigError
from llm.lora import LoraConfig, add_adapters, base_entry
from llm.model import GPT, GPTConfig
from llm.tokenizer import IM_END, IM_START

log = logging.getLogger(__name__)

RUN_KEYS = ("dropout", "attn")  # model keys a new run may set for itself: no weight depends on them


@dataclass
class Start:
    """What a run starts from: the model keys it fixes, its weights, its tokenizer and chat template."""

    source: str
    kind: str  # "checkpoint" or the Hugging Face layout
    model_config: dict
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    state: dict[str, torch.Tensor] | None = None  # ours; a Hugging Face folder's are read by `pretrained`
    pretrained: object | None = None  # llm.interop.hf.Pretrained
    notes: list[str] = field(default_factory=list)

    @property
    def location(self) -> Path:
        """Where the weights are read from: the .ckpt file, or the Hugging Face folder (absolute)."""
        return Path(self.pretrained.folder if self.pretrained is not None else self.source).resolve()

    def load_into(self, model: GPT) -> None:
        """Copy the weights into model, whose config holds model_config's keys."""
        if self.pretrained is None:
            model.load_state_dict(_fit_rows(self.state, model))
            log.info("init_from: loaded the weights of %s", self.source)
            return
        if model.config.vocab_size == self.pretrained.model_config["vocab_size"]:
            self.pretrained.load_into(model)
            return
        as_saved = GPTConfig(**{**model.config.to_dict(), "vocab_size": self.pretrained.model_config["vocab_size"]})
        missing, unexpected = model.load_state_dict(
            _fit_rows(self.pretrained.state_dict(as_saved), model), strict=False
        )
        missing = [k for k in missing if not k.endswith(("q_norm.weight", "k_norm.weight"))]
        if missing or unexpected:
            raise ConfigError(f"init_from={self.source}: weights missing {missing[:4]}, unexpected {unexpected[:4]}")
        log.info("init_from: loaded %s weights from %s, the embedding grown", self.kind, self.source)

    def add_chat_markers(self) -> None:
        """Give a tokenizer without ChatML's markers the two, and the model the rows for them (ChatML template)."""
        if self.chat_template is not None:
            return
        self.chat_template = ChatTemplate.chatml()
        missing = [t for t in (IM_START, IM_END) if self.tokenizer.token_to_id(t) is None]
        if not missing:
            return
        before = self.tokenizer.get_vocab_size()
        self.tokenizer.add_special_tokens(missing)
        after = self.tokenizer.get_vocab_size()
        self.model_config["vocab_size"] = after
        note = (
            f"init_from: the tokenizer had no chat markers: added {missing} as ids {list(range(before, after))}; "
            f"the vocabulary grows from {before} to {after} tokens, the embedding by the rows that needs"
        )
        log.warning("%s", note)
        self.notes.append(note)


def _fit_rows(state: dict[str, torch.Tensor], model: GPT) -> dict[str, torch.Tensor]:
    """state with its embedding, value-embedding and output rows grown to model's (a vocabulary that grew): new
    rows at the mean."""
    own = model.state_dict()
    fitted = dict(state)
    tables = [f"value_embeds.{i}.weight" for i in range(len(model.value_embeds))]
    for name in ("wte.weight", "lm_head.weight", *tables):
        if name in state and state[name].shape[0] < own[name].shape[0]:
            old = state[name]
            grown = old.mean(0, keepdim=True).expand(own[name].shape[0] - old.shape[0], -1)
            fitted[name] = torch.cat([old, grown])
    return fitted


def open_start(source: str, hub_dir: str | Path | None, outputs_root: str | Path = "outputs") -> Start:
    """init_from's PATH, read: "last" (the newest last.ckpt under outputs_root), one of our checkpoints or run
    folders, else a Hugging Face folder or hub id."""
    path = Path(source).expanduser()
    ours = source == "last" or path.suffix == ".ckpt" or (path.is_dir() and not (path / "config.json").is_file())
    if ours:
        return _our_checkpoint(find_checkpoint(source if source == "last" else path, outputs_root), source)
    return _hugging_face(source, hub_dir)


def _our_checkpoint(path: Path, source: str) -> Start:
    model, tokenizer, ckpt = load_checkpoint(path)
    config = {k: v for k, v in ckpt[MODEL_CONFIG].items() if k not in RUN_KEYS}
    template = ChatTemplate.from_dict(ckpt[CHAT_TEMPLATE]) if ckpt.get(CHAT_TEMPLATE) else None
    state = model.state_dict()
    return Start(str(path), "checkpoint", config, tokenizer, template, state=state)


def _hugging_face(source: str, hub_dir: str | Path | None) -> Start:
    from llm.interop.hf import Pretrained
    from llm.interop.tokenizer import tokenizer_from_hf

    pretrained = Pretrained.open(source, hub_dir)
    config_file = pretrained.folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    template = None
    if pretrained.chat_template:  # chat_template.jinja or tokenizer_config.json's, with the tokens it names
        template = ChatTemplate.from_hf_config(config | {"chat_template": pretrained.chat_template})
    tokenizer = tokenizer_from_hf(pretrained.folder)
    return Start(source, pretrained.layout, dict(pretrained.model_config), tokenizer, template, pretrained=pretrained)


def model_for(start: Start, **run_keys) -> GPT:
    """A GPT of start's shape (run_keys: attn, dropout, ...) with its weights: for tools outside train.py."""
    model = GPT(GPTConfig(**{"attn": "sdpa", "dropout": 0.0, "zero_init_proj": False} | run_keys | start.model_config))
    start.load_into(model)
    return model.eval()


def lora_resume(cfg: DictConfig, lora: LoraConfig, ckpt_path: Path | None) -> dict | None:
    """The LORA entry of the checkpoint resumed (None for none), checked against lora.*. LoRA trains on a frozen base:
    init_from is needed, and a resume reads the base the checkpoint names (init_from=last would find the run itself)."""
    if lora.r and not cfg.get("init_from"):
        raise ConfigError(f"lora.r={lora.r} trains adapters on a frozen base: give init_from (ours or Hugging Face's)")
    saved = read_checkpoint(ckpt_path).get(LORA) if ckpt_path is not None else None
    if ckpt_path is not None and bool(saved) != bool(lora.r):
        held = f"LoRA adapters (lora.r={saved['r']})" if saved else "every weight (lora.r=0)"
        raise ConfigError(f"lora.r={lora.r} but the checkpoint {ckpt_path} trained {held}: resume it with that")
    if saved:
        for key in ("r", "alpha", "targets"):
            if saved[key] != getattr(lora, key):
                raise ConfigError(
                    f"lora.{key}={getattr(lora, key)!r} but the checkpoint {ckpt_path} has {saved[key]!r}: "
                    "the adapters cannot change on a resume (start a new run without ckpt_path)"
                )
        with open_dict(cfg):
            cfg.init_from = saved["base"]["path"]
    return saved


def use_lora(module, lora: LoraConfig, start: Start, init_from: str, saved: dict | None) -> dict:
    """Name the base the module's network holds (its fingerprint, checked on a resume), then give it the adapters;
    returns the checkpoint's LORA entry."""
    if start.notes:
        raise ConfigError(
            f"lora.r={lora.r}: {start.notes[0]}; LoRA trains no embedding row, so theirs would stay untrained: "
            "fine-tune every weight (lora.r=0) or start from a base whose tokenizer has the markers"
        )
    base = base_entry(init_from, start.kind, start.location, module.net.state_dict())
    if saved is not None and saved["base"]["sha256"] != base["sha256"]:
        raise ConfigError(
            f"init_from={init_from}: these weights are not the base the checkpoint's adapters were trained on "
            f"(sha256 {base['sha256'][:12]}..., trained on {saved['base']['sha256'][:12]}...)"
        )
    add_adapters(module.net, lora)
    return {**lora.to_dict(), "base": saved["base"] if saved is not None else base}
