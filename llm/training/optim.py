"""Optimizers: AdamW on every parameter, or Muon on the hidden matrices and AdamW on the rest.

`build_optimizer(net, optim)` is what training (`LitGPT.configure_optimizers`) and `bench/speedrun.py`
both call, so the recipe a benchmark measures is the one a run gets.
"""

from __future__ import annotations

import logging
import math
from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch
from omegaconf import OmegaConf
from torch import nn

from llm.config import config_dir
from llm.errors import ConfigError
from llm.lora import ADAPTER
from llm.model import GPT
from llm.training.schedule import SCHEDULES

log = logging.getLogger(__name__)


# Newton-Schulz's polynomial a x + b x³ + c x⁵ at each of its five steps. quintic: Muon's one polynomial, five
# times (Jordan et al. 2024). polar_express: a polynomial per step, each the best for the singular values that the
# steps before leave (Amsel et al. 2025, "The Polar Express", for 5 steps, safety factor 0.02 and cushion 2; the
# modded-nanogpt speedrun's): closer to orthogonal in the same five steps.
NS_COEFFICIENTS = {
    "quintic": [(3.4445, -4.7750, 2.0315)] * 5,
    "polar_express": [
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    ],
}
NS_NORM_SCALE = {"quintic": 1.0, "polar_express": 1.02}  # the input is divided by its Frobenius norm times this


@dataclass
class MuonConfig:
    lr: float  # peak learning rate of the hidden matrices
    momentum: float  # Nesterov momentum of the gradient that Newton-Schulz orthogonalises
    weight_decay: float  # decoupled: each step multiplies the matrices by 1 - lr * weight_decay
    ns: str  # Newton-Schulz's coefficients: quintic (Muon's) or polar_express (NS_COEFFICIENTS)
    normuon_beta2: float | None  # NorMuon: each output row of the update divided by its running RMS; None: off

    def __post_init__(self) -> None:
        _check("optim.muon", self, {"lr": _positive, "momentum": _fraction, "weight_decay": _non_negative})
        if self.ns not in NS_COEFFICIENTS:
            raise ConfigError(f"optim.muon.ns={self.ns!r} is not one of {list(NS_COEFFICIENTS)}")
        b2 = self.normuon_beta2
        if b2 is not None and (isinstance(b2, bool) or not isinstance(b2, int | float) or not 0 <= b2 < 1):
            raise ConfigError(f"optim.muon.normuon_beta2={b2!r} must be in [0, 1), or null for plain Muon")


@dataclass
class OptimConfig:
    lr: float  # peak learning rate of AdamW, reached after warmup
    weight_decay: float  # AdamW decay of matrices and embeddings, never of biases or norm gains
    beta1: float
    beta2: float
    eps: float
    warmup_steps: int  # optimizer steps
    min_lr_ratio: float  # the schedule ends at lr * min_lr_ratio
    schedule: str  # cosine: warmup, then cosine decay; wsd: warmup, constant, then a linear cooldown
    cooldown_frac: float  # wsd: the last fraction of the steps that decays linearly to lr * min_lr_ratio
    mtp_weights: tuple[float, ...]  # multi-token prediction: the tokens after the next one, their loss weights
    mtp_decay_frac: float  # those weights have fallen to 0 at this fraction of the steps (llm/training/objective.py)
    untie_at: float | None  # a tied output layer gets its own copy of the embedding at this fraction of the steps
    muon: MuonConfig | None  # None: AdamW on every parameter; set: Muon on the hidden matrices
    base_width: int | None  # the width (n_embd) lr and muon.lr are for; None: every width trains at them as given
    width_power: float  # a wider model, w > base_width, trains at both lrs * (base_width / w) ** width_power

    def __post_init__(self) -> None:
        if isinstance(self.muon, Mapping):
            self.muon = make_config(MuonConfig, self.muon, "optim.muon")
        elif self.muon is not None and not isinstance(self.muon, MuonConfig):
            keys = ", ".join(f.name for f in fields(MuonConfig))
            raise ConfigError(f"optim.muon={self.muon!r} must be null or a node with keys {keys}")
        rules = {
            "lr": _positive,
            "weight_decay": _non_negative,
            "beta1": _fraction,
            "beta2": _fraction,
            "eps": _positive,
            "warmup_steps": _whole,
            "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
            "width_power": _non_negative,
            "cooldown_frac": (lambda v: 0 < v <= 1, "in (0, 1]"),
            "mtp_decay_frac": (lambda v: 0 < v <= 1, "in (0, 1]"),
        }
        _check("optim", self, rules)
        weights = self.mtp_weights
        if (
            isinstance(weights, str | bytes | Mapping)
            or not isinstance(weights, Sequence)
            or not all(isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in weights)
        ):
            raise ConfigError(
                f"optim.mtp_weights={weights!r} must be a list of weights >= 0, one per token after the next "
                "([] for next-token prediction alone, [0.5, 0.25] for two more)"
            )
        self.mtp_weights = tuple(float(w) for w in weights)
        u = self.untie_at
        if u is not None and (isinstance(u, bool) or not isinstance(u, int | float) or not 0 < u < 1):
            raise ConfigError(f"optim.untie_at={u!r} must be in (0, 1), or null to keep a tied output layer tied")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule={self.schedule!r} is not one of {list(SCHEDULES)}")
        if self.base_width is not None and (
            isinstance(self.base_width, bool) or not isinstance(self.base_width, int) or self.base_width < 1
        ):
            raise ConfigError(f"optim.base_width={self.base_width!r} must be null or a whole number of at least 1")

    def width_scale(self, width: int) -> float:
        """What both peak learning rates are multiplied by for a model `width` wide (n_embd): the lrs were set
        for base_width; wider models take smaller steps, narrower ones the same (docs/training.md, presets)."""
        return 1.0 if self.base_width is None else min(1.0, self.base_width / width) ** self.width_power

    def for_width(self, width: int) -> OptimConfig:
        """This config with lr and muon.lr at `width`: what the optimizer is built with; base_width None."""
        scale = self.width_scale(width)
        muon = None if self.muon is None else replace(self.muon, lr=self.muon.lr * scale)
        return replace(self, lr=self.lr * scale, muon=muon, base_width=None)


def make_config(cls: type, node: Mapping, key: str):
    """cls(**node), with a missing or unknown key reported as a ConfigError that names it."""
    allowed = [f.name for f in fields(cls)]
    unknown = [k for k in node if k not in allowed]
    missing = [k for k in allowed if k not in node]
    if unknown or missing:
        problem = f"has no key {unknown[0]!r}" if unknown else f"lacks the key {missing[0]!r}"
        raise ConfigError(f"{key} {problem}: its keys are {allowed}")
    return cls(**node)


_Rule = tuple[Callable[[float], bool], str]
_positive: _Rule = (lambda v: v > 0, "> 0")
_non_negative: _Rule = (lambda v: v >= 0, ">= 0")
_fraction: _Rule = (lambda v: 0 <= v < 1, "in [0, 1)")
_whole: _Rule = (lambda v: v >= 0 and float(v).is_integer(), "a whole number >= 0")


def _check(prefix: str, config: object, rules: dict[str, _Rule]) -> None:
    for key, (ok, rule) in rules.items():
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
            raise ConfigError(f"{prefix}.{key}={value!r} must be {rule}")


def hidden_matrices(net: GPT) -> list[nn.Parameter]:
    """The weights of every Linear inside the blocks that trains: attention qkv and proj, MLP fc and proj.

    Muon is for these; the embeddings, the output layer, norm gains and biases stay with AdamW, and so do LoRA's
    adapters (llm/lora.py): A and B are r x n slivers whose product is the update, not matrices Muon's orthogonal
    step is tuned for. Under LoRA the hidden matrices are frozen, so none is left."""
    return [
        m.weight
        for name, m in net.blocks.named_modules()
        if isinstance(m, nn.Linear) and m.weight.requires_grad and ADAPTER not in name
    ]


def newton_schulz(
    g: torch.Tensor,
    coefficients: list[tuple[float, float, float]],
    eps: float,
    dtype: torch.dtype,
    norm_scale: float = 1.0,
):
    """An approximately orthogonal matrix U V' near the (rows, cols) matrix g = U S V': one step of
    x <- a x + b (x x') x + c (x x')² x per (a, b, c) of coefficients (NS_COEFFICIENTS).

    With quintic's, the same sequence of operations as torch.optim.Muon's, in `dtype`: bfloat16 there always, here
    only where matmuls are fast in it (GPUs); CPUs without native bfloat16 run it ~20x slower than float32."""
    x = g.to(dtype)
    if g.size(0) > g.size(1):
        x = x.T  # (short, long): the Gram matrix x x' is the smaller square
    x = x / (x.norm() * norm_scale).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for a, b, c in coefficients:
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G²
        x = torch.addmm(x, poly, x, beta=a)  # a x + (b G + c G²) x
    if g.size(0) > g.size(1):
        x = x.T
    return x


class Muon(torch.optim.Muon):
    """torch.optim.Muon (same arguments, same state, same update) with Newton-Schulz in float32 on CPUs; and,
    where asked, Polar Express's coefficients (ns="polar_express") and NorMuon's row normalisation
    (normuon_beta2, Li et al. 2025): each output row of the orthogonalised update divided by its running RMS,
    then the whole rescaled to the norm it had, so rows that Newton-Schulz left large stop dominating."""

    ns_dtype: torch.dtype | None = None  # None: bfloat16 on GPUs, float32 elsewhere

    def __init__(self, params, *, ns: str = "quintic", normuon_beta2: float | None = None, **kwargs) -> None:
        super().__init__(params, **kwargs)
        for group in self.param_groups:  # saved with the groups: a resumed run keeps them
            group.update(ns=ns, normuon_beta2=normuon_beta2)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                dtype = self.ns_dtype or (torch.bfloat16 if p.device.type == "cuda" else torch.float32)
                ns = group["ns"]
                coefficients = (
                    NS_COEFFICIENTS[ns] if ns != "quintic" else [group["ns_coefficients"]] * group["ns_steps"]
                )
                update = newton_schulz(update, coefficients, group["eps"], dtype, NS_NORM_SCALE[ns])
                if group["normuon_beta2"] is not None:
                    update = self._normalise_rows(state, update.float(), group["normuon_beta2"], group["eps"])
                p.mul_(1 - lr * decay)
                p.add_(update, alpha=-lr * _muon_lr_scale(group["adjust_lr_fn"], p.shape))
        return loss

    @staticmethod
    def _normalise_rows(state: dict, update: torch.Tensor, beta2: float, eps: float) -> torch.Tensor:
        """NorMuon: update / sqrt(v), v the running mean square of each output row, rescaled to update's norm."""
        if "row_second_moment" not in state:
            state["row_second_moment"] = torch.zeros(update.size(0), 1, device=update.device)
        v = state["row_second_moment"]
        v.lerp_(update.square().mean(dim=1, keepdim=True), 1 - beta2)
        normed = update / (v.sqrt() + eps)
        return normed * (update.norm() / normed.norm().clamp(min=eps))


def _muon_lr_scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix lr factor: equal update RMS across rectangular shapes."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))


class _JointState(ChainMap):
    """Both optimizers' per-parameter state, read without adding entries to their defaultdicts."""

    def __getitem__(self, key):
        for mapping in self.maps:
            if key in mapping:
                return mapping[key]
        raise KeyError(key)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the hidden matrices and torch.optim.AdamW on every other parameter, as one optimizer.

    Lightning's automatic optimisation, gradient clipping and checkpointing expect one optimizer:
    param_groups are the two optimizers' own group dicts (AdamW's first), so a learning-rate scheduler
    and the clipping see every parameter; state_dict holds both states, so a resumed run is exact."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([*adamw.param_groups, *muon.param_groups], defaults={})
        self._link()

    def _link(self) -> None:
        """Share the inner optimizers' group dicts and state (a loaded state_dict replaces them)."""
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]
        self.state = _JointState(self.adamw.state, self.muon.state)  # Lightning moves it between devices

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:  # Lightning's closure runs forward, backward and gradient clipping
            with torch.enable_grad():
                loss = closure()
        self.adamw.step()
        self.muon.step()
        return loss

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.adamw.load_state_dict(state_dict["adamw"])
        self.muon.load_state_dict(state_dict["muon"])
        self._link()


def build_optimizer(net: GPT, optim: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW over GPT.param_groups, or MuonWithAdamW when optim.muon is set, at the lrs for the net's width
    (`OptimConfig.for_width`). fused: AdamW's one-kernel CUDA step."""
    optim = optim.for_width(net.config.n_embd)
    adamw_kwargs = dict(lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=fused)
    groups = net.param_groups(optim.weight_decay)
    hidden = hidden_matrices(net) if optim.muon is not None else []
    if not hidden:  # optim=adamw; or LoRA, whose adapters train with AdamW under optim=muon too
        if optim.muon is not None:
            log.warning("optim=muon: no hidden matrix trains (lora.r > 0), so AdamW (optim.lr) trains every parameter")
        return torch.optim.AdamW(groups, **adamw_kwargs)
    flat = [p for p in hidden if p.dim() != 2]
    if flat:
        raise ConfigError(
            f"optim=muon needs 2-D weight matrices, got a {tuple(flat[0].shape)} one (FSDP flattens parameters): "
            "use optim=adamw with trainer=fsdp"
        )
    ids = {id(p) for p in hidden}
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
    m = optim.muon
    muon = Muon(
        hidden, lr=m.lr, momentum=m.momentum, weight_decay=m.weight_decay, ns=m.ns, normuon_beta2=m.normuon_beta2
    )
    return MuonWithAdamW(muon, torch.optim.AdamW([g for g in rest if g["params"]], **adamw_kwargs))


def untie_step(optim: OptimConfig, net: GPT, total_steps: int) -> int | None:
    """The optimizer step at which `net`'s tied output layer gets its own matrix (optim.untie_at), or None."""
    if optim.untie_at is None or not net.config.tie_embeddings:
        return None
    return round(optim.untie_at * total_steps)


def untie_head(net: GPT, optimizer: torch.optim.Optimizer | None = None) -> nn.Parameter:
    """Give a tied output layer its own matrix, a copy of the token embedding (modded-nanogpt unties at 2/3 of the
    run: the embedding's sparse gradient gains from the head's early on, the two roles part later). The logits do
    not change at the moment of untying. `optimizer`: the new matrix joins the embedding's AdamW group, last, which
    is where build_optimizer puts it for the untied model (the output layer is the last parameter), so a resumed
    run's saved optimizer state lines up."""
    if not net.config.tie_embeddings:
        raise ConfigError("optim.untie_at: the output layer is already untied (model.config.tie_embeddings=false)")
    head = nn.Parameter(net.wte.weight.detach().clone())
    net.lm_head.weight = head
    net.config.tie_embeddings = False
    if optimizer is not None:
        groups = [g for g in optimizer.param_groups if any(p is net.wte.weight for p in g["params"])]
        if not groups:
            raise ConfigError("optim.untie_at: the token embedding is not trained here (LoRA?), so the head cannot be")
        groups[0]["params"].append(head)
    return head


def memory_estimate(net: GPT, optim: OptimConfig) -> dict[str, int]:
    """Bytes a training step keeps besides activations: the weights, the gradients of those that train, and the
    optimizer's state (AdamW: two moments per parameter; Muon: one momentum per hidden-matrix entry, and under
    NorMuon one second moment per row)."""
    params = list(net.parameters())  # a tied matrix once
    trainable = [p for p in params if p.requires_grad]
    muon = {id(p) for p in hidden_matrices(net)} if optim.muon is not None else set()
    states = sum((1 if id(p) in muon else 2) * p.numel() * p.element_size() for p in trainable)
    if optim.muon is not None and optim.muon.normuon_beta2 is not None:
        states += sum(4 * p.size(0) for p in trainable if id(p) in muon)  # float32
    return {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer": states,
    }


def optim_preset(name: str, **overrides) -> OptimConfig:
    """conf/optim/NAME.yaml as an OptimConfig, without Hydra (benchmarks, tests); muon={...} replaces that node."""
    node = OmegaConf.to_container(OmegaConf.load(config_dir() / "optim" / f"{name}.yaml"))
    return make_config(OptimConfig, {**node, **overrides}, "optim")
