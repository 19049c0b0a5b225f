"""LoRA: low-rank adapters on the frozen Linear layers of a pretrained base (`lora.r` > 0; docs/training.md, LoRA).

A targeted Linear y = W x + b trains as y = W x + b + (alpha / r) B A dropout(x): A (r, in), B (out, r), B zero at the
start so the model starts as its base. PEFT's LoRA layers do it (`add_adapters`: our blocks' Linear modules are plain
nn.Linear, which peft.inject_adapter_in_model wraps by name); everything else is frozen. Only A and B are saved: a
checkpoint names its base instead (`base_entry`: init_from, where its weights are, the sha256 of those weights), and
`merge` folds the adapters into the base's weights, W + (alpha / r) B A, for inference and export, without PEFT.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from llm.errors import ConfigError
from llm.model import GPT

# The Linear layers of every block, by their path inside the block: attention's and the MLP's, in and out
TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
ADAPTER = "lora_"  # in the name of every adapter parameter, and of no base parameter
A_SUFFIX, B_SUFFIX = ".lora_A.default.weight", ".lora_B.default.weight"  # PEFT's names (its adapter "default")


@dataclass
class LoraConfig:
    """conf/train.yaml's `lora` node."""

    r: int  # rank of A and B; 0: off
    alpha: float  # the update is scaled by alpha / r
    dropout: float  # on the adapters' input
    targets: list[str]  # which of TARGETS get adapters

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 0:
            raise ConfigError(f"lora.r={self.r!r} must be a whole number >= 0 (0: off)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise ConfigError(f"lora.alpha={self.alpha!r} must be a number > 0")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout={self.dropout!r} must be in [0, 1)")
        self.targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        wrong = [t for t in self.targets if t not in TARGETS]
        if wrong or not self.targets or len(set(self.targets)) < len(self.targets):
            raise ConfigError(f"lora.targets={self.targets!r}: give a list of distinct names from {list(TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}


def lora_config(node: Mapping | None) -> LoraConfig:
    """The `lora` node as a LoraConfig (off when there is none), an unknown or missing key named."""
    node = dict(node or {"r": 0, "alpha": 1, "dropout": 0.0, "targets": list(TARGETS)})
    keys = ["r", "alpha", "dropout", "targets"]
    unknown, missing = [k for k in node if k not in keys], [k for k in keys if k not in node]
    if unknown or missing:
        problem = f"has no key {unknown[0]!r}" if unknown else f"lacks the key {missing[0]!r}"
        raise ConfigError(f"lora {problem}: its keys are {keys}")
    return LoraConfig(**node)


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, whatever the dtype
    return h.hexdigest()


def base_entry(init_from: str, kind: str, path: str | Path, state: Mapping[str, torch.Tensor]) -> dict:
    """What a LoRA checkpoint records of its base: init_from as given, its kind ("checkpoint" or a Hugging Face
    layout), where its weights are (absolute) and the fingerprint of those weights as our model holds them."""
    return {"init_from": str(init_from), "kind": kind, "path": str(Path(path).resolve()), "sha256": fingerprint(state)}


def add_adapters(net: GPT, lora: LoraConfig) -> None:
    """Wrap the targeted Linear layers of every block in PEFT's LoRA layers and freeze everything else, in place.

    From then on the network's state_dict holds the adapters only, and loading one that lacks the base's weights is
    not an error: the base comes from init_from, checked against its fingerprint (llm/checkpoint.py)."""
    try:
        from peft import LoraConfig as PeftConfig
        from peft import inject_adapter_in_model
    except ImportError as e:
        raise ConfigError(f"lora.r={lora.r} needs PEFT: pip install -e '.[lora]' ({e})") from None
    pattern = r"blocks\.\d+\.(" + "|".join(re.escape(t) for t in lora.targets) + ")"  # full match on module paths
    peft_config = PeftConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=pattern, bias="none"
    )
    inject_adapter_in_model(peft_config, net)
    frozen = frozenset(n for n, p in net.named_parameters(remove_duplicate=False) if not p.requires_grad)  # tied: both
    net.register_state_dict_post_hook(partial(_drop_frozen, frozen))
    net.register_load_state_dict_post_hook(partial(_allow_missing, frozen))


def _drop_frozen(frozen: frozenset[str], module: nn.Module, state: dict, prefix: str, local_metadata) -> None:
    for name in frozen:
        state.pop(prefix + name, None)


def _allow_missing(frozen: frozenset[str], module: nn.Module, incompatible_keys) -> None:
    missing = incompatible_keys.missing_keys  # full names: the network's own under its parent's prefix
    missing[:] = [k for k in missing if not any(k == n or k.endswith("." + n) for n in frozen)]


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, a tied matrix once."""
    params = list(net.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge(model: GPT, adapters: Mapping[str, torch.Tensor], scale: float) -> GPT:
    """Fold adapters (PEFT's names, as a LoRA checkpoint holds them) into model's weights: W += scale * B A.

    model is a plain GPT holding the base's weights; it computes what the base with the adapters computed."""
    linears = dict(model.named_modules())
    pairs = {k.removesuffix(A_SUFFIX) for k in adapters if k.endswith(A_SUFFIX)}
    unexpected = [k for k in adapters if not k.endswith((A_SUFFIX, B_SUFFIX))]
    if unexpected or len(adapters) != 2 * len(pairs):
        raise ConfigError(f"LoRA checkpoint: unexpected weights {unexpected[:4] or sorted(adapters)[:4]}")
    with torch.no_grad():
        for path in sorted(pairs):
            linear = linears.get(path)
            if not isinstance(linear, nn.Linear):
                raise ConfigError(f"LoRA checkpoint: an adapter on {path}, which is not a Linear layer of the model")
            a, b = adapters[path + A_SUFFIX].float(), adapters[path + B_SUFFIX].float()  # (r, in), (out, r)
            delta = (b @ a) * scale  # (out, in), in float32 whatever the weights' dtype
            linear.weight.copy_((linear.weight.float() + delta.to(linear.weight.device)).to(linear.weight.dtype))
    return model
