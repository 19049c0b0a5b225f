"""Speedrun: our default recipe against nanoGPT's and modded-nanogpt's, on the same documents, tokenizer, model
size and clock.

    python -m bench.speedrun --quick                        # CPU: tiny-sized models, the built-in corpus
    python -m bench.speedrun --quick --data ~/notes ~/code  # any folders
    python -m bench.speedrun --quick --ablate               # also ours with one choice changed at a time
    python -m bench.speedrun --quick --ablate unet_skips    # only the changes whose names contain unet_skips
    python -m bench.speedrun --gpu                          # one GPU: gpt2-124m-sized models, bf16, compiled

(a) nanoGPT's recipe: the GPT-2 block (learned positions, LayerNorm, GELU, biases, tied embeddings) with
AdamW β 0.9/0.95, weight decay 0.1 and clipping 1.0 (conf/optim/adamw.yaml). (b) ours: the `tiny` preset
(`--quick`), or its architecture at the `small` size (`--cpu`) or GPT-2's (`--gpu`), with the default optimizer
of conf/train.yaml. (c) modded-nanogpt's speedrun recipe as far as llm.model and build_optimizer express it
(MODDED; what it leaves out is listed there). Every model is llm.model.GPT and every optimizer comes from
llm.training.optim.build_optimizer: what is measured is what `python train.py` trains. All read batches
from the token files the data pipeline writes, in the same order, with one tokenizer.

Each recipe trains at every learning rate of a small sweep (its conf/optim lrs at the model's width, as
training scales them, times --lr-scales; under Muon both lrs scale together; nanoGPT at β2 0.95 and 0.99,
the two its configs set, and with both our epoch windows and its get_batch's random windows) for --minutes of
training time; each recipe's schedule (optim.schedule) to lr x min_lr_ratio
follows each run's own clock. Runs take turns step by step, so a busy machine slows every run alike; each
run's clock counts only its own steps, and stops while it is evaluated. Every run is scored on the same
validation windows in bits per byte (cross-entropy in bits / UTF-8 bytes of the predicted text), which does
not depend on the tokenizer. The best lr of each recipe is compared with the other's best: the final val
bpb of each, and the time at which (b) first reaches (a)'s final val bpb, as a fraction of (a)'s time.
Writes speedrun.csv (every evaluation), speedrun.md (the tables) and speedrun.png to --out.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tokenizers import Tokenizer

from llm import provenance
from llm.config import config_dir, model_preset, register_resolvers
from llm.data.tokens import document_positions
from llm.model import GPT, GPTConfig, document_mask
from llm.tokenizer import eod_id
from llm.training.objective import mtp_weights_at, multi_token_losses
from llm.training.optim import OptimConfig, build_optimizer, optim_preset, untie_head, untie_step
from llm.training.schedule import lr_schedule

# nanoGPT's GPT-2 block at any size: the keys a preset must have to be GPT-2, next to the size keys
GPT2_BLOCK = dict(
    pos="learned",
    norm="layernorm",
    mlp="gelu",
    mlp_hidden=None,
    bias=True,
    qk_norm=False,
    zero_init_proj=False,
    logit_softcap=None,
    tie_embeddings=True,
    value_embeds=0,
    unet_skips=False,
)
NANOGPT_BETA2 = (0.95, 0.99)  # config/train_gpt2.py and config/train_shakespeare_char.py
# how batches are cut from train.bin: "epoch" (ours: every window once an epoch, in a shuffled order) or "random"
# (nanoGPT's get_batch: every sequence at a uniformly random offset, drawn with replacement)
SAMPLINGS = ("epoch", "random")
ARCH_KEYS = ("n_kv_head", *GPT2_BLOCK)  # what makes a recipe's block, beside its size
# shape preset, minutes per run, batch, validation windows, evaluations per run, lr sweep: times each recipe's
# lrs at the preset's width (conf/optim's lrs, set for `tiny`, scaled by OptimConfig.for_width)
# modded-nanogpt's record recipe (github.com/KellerJordan/modded-nanogpt, train_gpt.py) on our block, which already
# has its rotary positions, QK-norm, ReLU², zero-initialised projections and Muon on the hidden matrices. Left out,
# because llm.model or a CPU cannot express them: FP8 matmuls; flex-attention's sliding and block-sparse windows
# (its per-document mask is data.document_mask, measured as an ablation of ours, not put in this row);
# the batch-size and sequence-length schedules; one AdamW lr for the embeddings, head and scalars where it sets
# three; its x0 residual mix, smear gate and attention gates; Muon's momentum warmup and cautious weight decay.
# its block: value embeddings (None: L // 4 tables), U-net skips, a soft-cap of 15, RMSNorm, a head tied to the
# embedding until MODDED_UNTIE
MODDED_MODEL = dict(value_embeds=None, unet_skips=True, logit_softcap=15.0, tie_embeddings=True, norm="rmsnorm")
MODDED_MTP = (0.5, 0.25)  # multi-token prediction's weights of tokens t+2 and t+3, at 0 by 2/3 of the run
MODDED_UNTIE = 2 / 3  # its head starts tied to the embedding and gets its own matrix at 2/3 of the run
MODDED_OPTIM = dict(
    beta1=0.8,
    eps=1e-10,
    weight_decay=0.0,
    warmup_steps=0,
    schedule="wsd",
    cooldown_frac=0.4,
    mtp_weights=MODDED_MTP,
    mtp_decay_frac=2 / 3,
    untie_at=MODDED_UNTIE,
)
MODDED_MUON = dict(lr=0.05, ns="polar_express", normuon_beta2=0.95)  # NorMuon on Polar Express
MODES = {
    "quick": dict(preset="tiny", minutes=1.25, batch=16, val_windows=64, evals=15, lr_scales="0.5,1,2"),
    "cpu": dict(preset="small", minutes=5.0, batch=16, val_windows=64, evals=20, lr_scales="0.5,1,2"),
    "gpu": dict(preset="gpt2-124m", minutes=10.0, batch=32, val_windows=128, evals=20, lr_scales="0.5,1,2"),
}


@dataclass
class Recipe:
    name: str
    model: GPTConfig
    optim: OptimConfig
    sampling: str = "epoch"  # SAMPLINGS
    document_mask: bool = False  # data.document_mask: attention within each document of a window, in training and val


def value_embed_tables(n_layer: int) -> int:
    """modded-nanogpt's share: 3 tables for 12 layers (its first three and last three), at least one."""
    return max(1, n_layer // 4)


def default_choices() -> dict[str, str]:
    """The model preset and optimizer that `python train.py` uses, from conf/train.yaml's defaults list."""
    defaults = OmegaConf.load(config_dir() / "train.yaml").defaults
    return {k: v for item in defaults if OmegaConf.is_dict(item) for k, v in item.items()}


def recipes(
    preset: str,
    vocab_size: int,
    peer_beta2: tuple[float, ...] = NANOGPT_BETA2,
    peer_warmup: int | None = None,
    peer_sampling: tuple[str, ...] = ("epoch",),
) -> tuple[list[Recipe], Recipe, Recipe]:
    """(nanoGPT's variants, ours, modded-nanogpt's) at the size of `preset`, all reading `vocab_size` tokens.

    nanoGPT's configs set β2 0.95 (GPT-2) or 0.99 (its small models), and its get_batch draws random windows: the
    nanoGPT row sweeps `peer_beta2` x `peer_sampling`. Its warmup is conf/optim/adamw.yaml's steps unless
    `peer_warmup` says otherwise (a short run spends much of itself there)."""
    size = dict(vocab_size=vocab_size, dropout=0.0, attn="sdpa")
    shape = model_preset(preset, **size)
    nanogpt = replace(shape, **GPT2_BLOCK, n_kv_head=shape.n_head)
    choice = default_choices()
    ours_preset = model_preset(choice["model"], **size)
    if preset == choice["model"]:
        ours = ours_preset
    else:  # our block at the other preset's size; its K/V heads in the same proportion
        ratio = ours_preset.n_head // ours_preset.n_kv_head
        arch = {k: getattr(ours_preset, k) for k in GPT2_BLOCK if k != "mlp_hidden"}
        ours = replace(shape, **arch, mlp_hidden=None, n_kv_head=max(1, shape.n_head // ratio))
    # each optimizer at its lrs for this width (OptimConfig.for_width), as train.py builds it
    adamw = optim_preset("adamw").for_width(shape.n_embd)
    if peer_warmup is not None:
        adamw = replace(adamw, warmup_steps=peer_warmup)
    peers = [
        Recipe("nanoGPT", GPTConfig(**nanogpt.to_dict()), replace(adamw, beta2=b2), sampling)
        for sampling in peer_sampling
        for b2 in peer_beta2
    ]
    optim = optim_preset(choice["optim"]).for_width(ours.n_embd)
    ours = Recipe("ours", GPTConfig(**ours.to_dict()), optim, document_mask=default_document_mask())
    return peers, ours, modded(ours)


def default_document_mask() -> bool:
    """conf/data/default.yaml's data.document_mask: what `python train.py` trains with."""
    return bool(OmegaConf.load(config_dir() / "data" / "default.yaml").document_mask)


def modded(ours: Recipe) -> Recipe:
    """modded-nanogpt's recipe at ours' size: its additions to our block (MODDED_MODEL, one K/V head per query
    head), Muon at its lr and AdamW at its betas, eps and no decay, its schedule, multi-token prediction and late
    untying (MODDED_OPTIM)."""
    m = ours.model
    keys = {**MODDED_MODEL, "value_embeds": value_embed_tables(m.n_layer), "n_kv_head": m.n_head}
    muon = replace(ours.optim.muon, **{**MODDED_MUON, "lr": MODDED_MUON["lr"] * ours.optim.width_scale(m.n_embd)})
    optim = replace(ours.optim, **MODDED_OPTIM, muon=muon)
    return Recipe("modded-nanogpt", GPTConfig(**{**m.to_dict(), **keys}), optim)


def ablations(nanogpt: Recipe, ours: Recipe) -> list[Recipe]:
    """Ours with one of its choices replaced by nanoGPT's, for every choice where the two differ; then the
    choices ours does not make (SwiGLU, a soft-cap, a separate output layer, modded-nanogpt's value embeddings,
    U-net skips, warmup-stable-decay schedule, Polar Express, NorMuon or plain Muon, multi-token prediction, the
    document mask, late untying), one at a time."""
    out = []
    if (ours.optim.muon is None) != (nanogpt.optim.muon is None):
        out.append(Recipe(f"ours, {'AdamW' if ours.optim.muon else 'Muon'}", ours.model, nanogpt.optim))
    other = "cosine" if ours.optim.schedule == "wsd" else "wsd"
    out.append(Recipe(f"ours, schedule={other}", ours.model, replace(ours.optim, schedule=other)))
    if ours.optim.muon is not None:  # modded-nanogpt's Muon variants, one at a time: added, or undone if ours has it
        for key, value, plain in (("ns", "polar_express", "quintic"), ("normuon_beta2", 0.95, None)):
            setting = plain if getattr(ours.optim.muon, key) == value else value
            muon = replace(ours.optim.muon, **{key: setting})
            out.append(Recipe(f"ours, muon.{key}={setting}", ours.model, replace(ours.optim, muon=muon)))
    if not ours.optim.mtp_weights:  # modded-nanogpt's multi-token prediction, decayed to next-token by 2/3
        mtp = replace(ours.optim, mtp_weights=MODDED_MTP)
        out.append(Recipe(f"ours, mtp_weights={list(MODDED_MTP)}", ours.model, mtp))
    mask = not ours.document_mask  # modded-nanogpt's attention within each document (data.document_mask)
    out.append(Recipe(f"ours, document_mask={mask}", ours.model, ours.optim, document_mask=mask))
    if ours.model.tie_embeddings and ours.optim.untie_at is None:  # modded-nanogpt's late untying of the head
        out.append(Recipe(f"ours, untie_at={MODDED_UNTIE:.2f}", ours.model, replace(ours.optim, untie_at=MODDED_UNTIE)))
    changes = [(key, getattr(nanogpt.model, key)) for key in ARCH_KEYS if key != "mlp_hidden"]
    changes += [("mlp", "swiglu"), ("logit_softcap", 15.0), ("tie_embeddings", False), ("qk_norm", True)]
    changes += [("value_embeds", value_embed_tables(ours.model.n_layer)), ("unet_skips", True), ("norm", "rmsnorm")]
    seen = set()
    for key, value in changes:
        if getattr(ours.model, key) == value or (key, value) in seen:
            continue
        seen.add((key, value))
        model = GPTConfig(**{**ours.model.to_dict(), key: value, "mlp_hidden": None})
        out.append(Recipe(f"ours, {key}={value}", model, ours.optim))
    return out


def scaled(optim: OptimConfig, scale: float) -> OptimConfig:
    muon = None if optim.muon is None else replace(optim.muon, lr=optim.muon.lr * scale)
    return replace(optim, lr=optim.lr * scale, muon=muon)


def lr_label(optim: OptimConfig, sampling: str = "epoch") -> str:
    label = f"{optim.lr:.2g}" if optim.muon is None else f"{optim.lr:.2g} / muon {optim.muon.lr:.2g}"
    label = label if optim.beta2 == 0.95 else f"{label}, β2 {optim.beta2:g}"
    return label if sampling == "epoch" else f"{label}, {sampling} windows"


# ---------------------------------------------------------------------------------------------- data


def prepare_corpus(paths: list[str] | None, preset: str, out: Path) -> tuple[Path, dict, Tokenizer]:
    """Ingest, split and tokenize through the training pipeline (conf/data/default.yaml, cached).

    Returns the token folder, its meta.json and the one tokenizer both recipes read."""
    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=[f"model={preset}", f"paths.output_dir={out}"])
    if paths:
        cfg.data.paths = [str(Path(p).expanduser().resolve()) for p in paths]
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.folder, datamodule.meta, datamodule.tokenizer


def token_bytes(tokenizer: Tokenizer) -> torch.Tensor:
    """UTF-8 bytes of each token id's text, (vocab,): byte-level BPE writes each byte as one character of its
    alphabet, so a token's length in characters is its length in bytes; the end-of-document token has none."""
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    nbytes = torch.zeros(tokenizer.get_vocab_size(), dtype=torch.long)
    for text, i in tokenizer.get_vocab().items():
        nbytes[i] = 0 if text in special else len(text)
    return nbytes


class Tokens:
    """train.bin and val.bin as batches: every epoch, every training window once, in an order from (seed, epoch);
    or, as nanoGPT's get_batch, windows at random offsets."""

    def __init__(
        self, folder: Path, dtype: str, block_size: int, batch: int, val_windows: int, eod: int, device
    ) -> None:
        self.eod = eod  # ends every document: where a document mask starts the next
        self.train = np.memmap(folder / "train.bin", dtype=dtype, mode="r")
        val = np.memmap(folder / "val.bin", dtype=dtype, mode="r")
        self.T, self.B, self.device = block_size, batch, device
        if len(self.train) < (block_size + 1) * batch:
            raise SystemExit(f"{len(self.train)} training tokens: too few for one batch of {batch} x {block_size}")
        n = min(val_windows, (len(val) - 1) // block_size)
        if n < 1:
            raise SystemExit(f"{len(val)} validation tokens: too few for one window of {block_size}")
        windows = torch.from_numpy(val[: n * block_size + 1].astype(np.int64))
        self.val_x = windows[:-1].view(n, block_size)
        self.val_y = windows[1:].view(n, block_size)

    def batches(self, seed: int, sampling: str = "epoch") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one run, as `sampling` (SAMPLINGS) cuts them, from `seed`."""
        return self.random_batches(seed) if sampling == "random" else self.epoch_batches(seed)

    def _batch(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of the windows of T + 1 tokens that begin at `starts`."""
        rows = [torch.from_numpy(self.train[s : s + self.T + 1].astype(np.int64)) for s in starts]
        xy = torch.stack(rows).to(self.device, non_blocking=True)
        return xy[:, :-1], xy[:, 1:]

    def epoch_batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every epoch, the training windows at a random phase, each once, in an order from (seed, epoch)."""
        T, epoch = self.T, 0
        while True:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            phase = int(torch.randint(T, (1,), generator=g))
            starts = torch.arange(phase, len(self.train) - T, T)
            starts = starts[torch.randperm(len(starts), generator=g)]
            for i in range(0, len(starts) - self.B + 1, self.B):
                yield self._batch(starts[i : i + self.B])
            epoch += 1

    def random_batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """nanoGPT's get_batch: each of the B windows at an offset drawn uniformly from the whole split."""
        g = torch.Generator().manual_seed(seed)
        while True:
            yield self._batch(torch.randint(len(self.train) - self.T, (self.B,), generator=g))


# ---------------------------------------------------------------------------------------------- training


class Run:
    """One (recipe, lr) run: its model, optimizer, batches, clock and validation curve."""

    def __init__(self, recipe: Recipe, optim: OptimConfig, data: Tokens, nbytes: torch.Tensor, args) -> None:
        self.recipe, self.optim, self.data, self.args = recipe, optim, data, args
        self.device = data.device
        torch.manual_seed(args.seed)  # every run starts from its recipe's same initial weights
        self.net = GPT(recipe.model).to(self.device)
        self.params = self.net.num_params(non_embedding=False)
        self.opt = build_optimizer(self.net, optim, fused=self.device.type == "cuda")
        self.peaks = [g["lr"] for g in self.opt.param_groups]
        if args.compile:
            self.net.compile()
        self.batches = data.batches(args.seed, recipe.sampling)
        self.val_bytes = int(nbytes[data.val_y].sum())
        self.clock, self.steps, self.timed_steps = 0.0, 0, 0
        self.budget = args.minutes * 60
        self.curve: list[tuple[float, int, float, float]] = []  # (train seconds, steps, val loss, val bpb)
        self.next_eval = 0.0

    @property
    def label(self) -> str:
        """Its lrs, and what else sets it apart from the other runs of its recipe."""
        return lr_label(self.optim, self.recipe.sampling)

    @property
    def done(self) -> bool:
        return self.clock >= self.budget

    def expected_steps(self) -> int:
        """Steps this run will make in its budget, from its rate so far: where the schedule ends."""
        if self.timed_steps < 3:
            return 10**9  # the first steps: warmup, before any rate is known
        return max(self.steps + 1, round(self.timed_steps / self.clock * self.budget))

    def _step(self) -> None:
        o = self.optim
        total = self.expected_steps()  # where the lr schedule, the untying and multi-token prediction end
        m = lr_schedule(o.schedule, o.warmup_steps, total, o.min_lr_ratio, o.cooldown_frac)(self.steps)
        for group, peak in zip(self.opt.param_groups, self.peaks, strict=True):
            group["lr"] = peak * m
        untie = untie_step(o, self.net, total)
        if untie is not None and self.steps >= untie:  # optim.untie_at, before the step's forward as in LitGPT
            untie_head(self.net, self.opt)
        x, y = next(self.batches)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.args.bf16):
            logits = self.forward(x)
        weights = mtp_weights_at(o.mtp_weights, self.steps, total, o.mtp_decay_frac)
        loss = multi_token_losses(logits, y, weights)[1]  # the next-token loss alone unless optim.mtp_weights
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.args.clip)
        self.opt.step()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of x, each document of a window attended to alone where the recipe has the document mask (as
        LitGPT does with data.document_mask: in training and in validation)."""
        if not self.recipe.document_mask:
            return self.net(x)
        pos = document_positions(x, self.data.eod)
        return self.net(x, input_pos=pos, mask=document_mask(pos))

    def train_step(self) -> None:
        sync(self.device)
        start = time.perf_counter()
        self._step()
        sync(self.device)
        if self.steps > 0:  # the first step (compilation, lazy initialisation) is not timed
            self.clock += time.perf_counter() - start
            self.timed_steps += 1
        self.steps += 1

    @torch.no_grad()
    def evaluate(self) -> None:
        self.net.eval()
        total = 0.0
        for x, y in zip(self.data.val_x.split(16), self.data.val_y.split(16), strict=True):
            x, y = x.to(self.device), y.to(self.device)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.args.bf16):
                logits = self.forward(x)
            total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        self.net.train()
        loss = total / self.data.val_y.numel()
        bpb = total / math.log(2) / self.val_bytes
        if not math.isfinite(bpb):
            bpb = float("inf")  # diverged: this lr loses the sweep
            self.clock = self.budget
        self.curve.append((min(self.clock, self.budget), self.steps, loss, bpb))

    def maybe_evaluate(self) -> None:
        if self.clock >= self.next_eval or self.done:
            self.evaluate()
            self.next_eval += self.budget / self.args.evals

    @property
    def final_bpb(self) -> float:
        return self.curve[-1][3]

    @property
    def tokens(self) -> int:
        return self.steps * self.data.B * self.data.T


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


LOADS: list[float] = []  # the 1-minute load average, every 10 s of wall time while runs train


def train_all(runs: list[Run]) -> None:
    """Round robin, one step each, until every run has spent its budget; evaluations pause the run's clock."""
    for run in runs:
        run.maybe_evaluate()  # at 0 s: the untrained model
    active = list(runs)
    sampled = 0.0
    while active:
        if time.perf_counter() - sampled > 10:
            LOADS.append(os.getloadavg()[0])
            sampled = time.perf_counter()
        for run in active:
            run.train_step()
            run.maybe_evaluate()
        for run in [r for r in active if r.done]:
            active.remove(run)
            rate = run.tokens / max(run.clock, 1e-9)
            print(
                f"  {run.recipe.name:<28} lr {run.label:<20} {run.steps:>6} steps "
                f"{rate:>9,.0f} tok/s  val bpb {run.final_bpb:.4f}",
                flush=True,
            )


def first_reach(curve: list[tuple[float, int, float, float]], target: float) -> float | None:
    """Training seconds at which the val bpb first reaches target, linear between evaluations; None: never."""
    for (t0, _, _, b0), (t1, _, _, b1) in zip(curve, curve[1:], strict=False):
        if b1 <= target:
            return t1 if b0 == b1 else t0 + (t1 - t0) * (b0 - target) / (b0 - b1)
    return None


# ---------------------------------------------------------------------------------------------- report


def best_runs(runs: list[Run]) -> dict[str, Run]:
    """The run with the lowest final val bpb of each recipe name (nanoGPT: over both β2)."""
    best: dict[str, Run] = {}
    for run in runs:
        if run.recipe.name not in best or run.final_bpb < best[run.recipe.name].final_bpb:
            best[run.recipe.name] = run
    return best


def other_optimizer(recipe: Recipe, ours: Recipe) -> bool:
    """An ablation that swaps the optimizer sweeps its own lrs; one that changes anything else trains at ours'."""
    return (recipe.optim.muon is None) != (ours.optim.muon is None)


def same_lrs(a: OptimConfig, b: OptimConfig) -> bool:
    return a.lr == b.lr and (a.muon and a.muon.lr) == (b.muon and b.muon.lr)


def report(runs: list[Run], a: str, ours: Recipe, c: str, args, header: list[str]) -> str:  # noqa: C901
    best, b = best_runs(runs), ours.name
    lines = [
        *header,
        "",
        "| recipe | lr (AdamW / Muon) | steps | tokens | tokens/s | val bpb |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        mark = " **best**" if best[run.recipe.name] is run else ""
        rate = run.tokens / max(run.clock, 1e-9)
        lines.append(
            f"| {run.recipe.name} | {run.label} | {run.steps:,} | {run.tokens:,} | {rate:,.0f} | "
            f"{run.final_bpb:.4f}{mark} |"
        )
    edges = [name for name, run in best.items() if _at_sweep_edge(run, runs)]
    if edges:
        lines += ["", f"best lr at the edge of its sweep (widen --lr-scales): {'; '.join(edges)}"]
    ra, rb = best[a], best[b]
    target, total = ra.final_bpb, ra.curve[-1][0]
    reached = first_reach(rb.curve, target)
    lines += [
        "",
        f"best vs best, {args.minutes:g} min of training each:",
        "",
        "| recipe | lr | parameters | val bpb at the end | time to nanoGPT's final val bpb |",
        "| --- | --- | ---: | ---: | ---: |",
        f"| (a) {a} | {ra.label} | {ra.params:,} | {ra.final_bpb:.4f} | {total:.1f} s (1.00) |",
        f"| (b) {b} | {rb.label} | {rb.params:,} | {rb.final_bpb:.4f} | {_when(rb, target, total)} |",
    ]
    if c in best:
        rc = best[c]
        lines.append(f"| (c) {c} | {rc.label} | {rc.params:,} | {rc.final_bpb:.4f} | {_when(rc, target, total)} |")
    if reached is not None:
        lines += ["", f"{b} reaches {a}'s final val bpb {target:.4f} in {reached / total:.2f}x its time"]
    if c in best:
        rc = best[c]
        versus = first_reach(rb.curve, rc.final_bpb)
        lines += [
            f"{b} against {c}: final val bpb {rb.final_bpb:.4f} against {rc.final_bpb:.4f} "
            f"({rb.final_bpb - rc.final_bpb:+.4f})"
            + ("" if versus is None else f"; {b} reaches {c}'s final in {versus / rc.curve[-1][0]:.2f}x its time")
        ]
    ablated = [name for name in best if name not in (a, b, c)]
    if ablated:
        lines += [
            "",
            "ablations: ours with one choice changed, at ours' conf lrs (another optimizer: best of its own sweep), "
            "trained in the same round robin; Δ is against ours at the same lr, positive is worse:",
            "",
            "| ours, changed | lr | parameters | val bpb | Δ val bpb | time to nanoGPT's final val bpb |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        at_conf = [r for r in runs if r.recipe is ours and r.optim == ours.optim]
        for run in at_conf[:1] or [rb]:
            lines.append(
                f"| (none) | {run.label} | {run.params:,} | {run.final_bpb:.4f} | 0 | {_when(run, target, total)} |"
            )
        for name in ablated:
            run = best[name]
            same = [r for r in runs if r.recipe is ours and same_lrs(r.optim, run.optim)]
            base = same[0] if same else rb
            lines.append(
                f"| {name.removeprefix('ours, ')} | {run.label} | {run.params:,} | {run.final_bpb:.4f} | "
                f"{run.final_bpb - base.final_bpb:+.4f} | {_when(run, target, total)} |"
            )
    return "\n".join(lines)


def _when(run: Run, target: float, total: float) -> str:
    reached = first_reach(run.curve, target)
    return "not reached" if reached is None else f"{reached:.1f} s ({reached / total:.2f})"


def _at_sweep_edge(best: Run, runs: list[Run]) -> bool:
    lrs = sorted(r.optim.lr for r in runs if r.recipe is best.recipe)
    return len(lrs) > 2 and best.optim.lr in (lrs[0], lrs[-1])


def plot(runs: list[Run], a: str, b: str, c: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_runs(runs)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colors = {a: "tab:blue", b: "tab:red", c: "tab:green"}
    runs = [run for run in runs if run.recipe.name in colors]  # the ablations are in the table, not here
    for run in runs:
        t = [p[0] for p in run.curve]
        bpb = [p[3] for p in run.curve]
        is_best = best[run.recipe.name] is run
        color = colors[run.recipe.name]
        label = f"{run.recipe.name}, lr {run.label}" if is_best else None
        ax.plot(t, bpb, color=color, lw=2 if is_best else 0.8, alpha=1 if is_best else 0.35, label=label)
    target = best[a].final_bpb
    ax.axhline(target, color="tab:blue", ls="--", lw=0.8)
    reached = first_reach(best[b].curve, target)
    if reached is not None:
        ax.axvline(reached, color="tab:red", ls=":", lw=1)
        ax.annotate(
            f"{reached / best[a].curve[-1][0]:.2f}x", (reached, target), textcoords="offset points", xytext=(4, 6)
        )
    finite = [p[3] for r in runs for p in r.curve if math.isfinite(p[3])]
    ax.set_ylim(min(finite) - 0.05, min(max(finite), sorted(finite)[len(finite) // 2] + 1.5))
    ax.set_xlabel("training time (s), evaluation excluded")
    ax.set_ylabel("val bits per byte")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_csv(runs: list[Run], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["recipe", "lr", "muon_lr", "beta2", "sampling", "train_seconds", "step", "tokens", "val_loss", "val_bpb"]
        )
        for run in runs:
            muon = run.optim.muon.lr if run.optim.muon else ""
            for t, steps, loss, bpb in run.curve:
                tokens = steps * run.data.B * run.data.T
                w.writerow(
                    [
                        run.recipe.name,
                        run.optim.lr,
                        muon,
                        run.optim.beta2,
                        run.recipe.sampling,
                        f"{t:.3f}",
                        steps,
                        tokens,
                        f"{loss:.5f}",
                        f"{bpb:.5f}",
                    ]
                )


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CPU, tiny-sized models, 1.25 min per run")
    mode.add_argument("--gpu", action="store_true", help="one CUDA GPU, gpt2-124m-sized models, bf16, compiled")
    parser.add_argument("--data", nargs="+", help="folders or files (default: the built-in corpus)")
    parser.add_argument("--name", help="names the corpus in the outputs (default: builtin, or the folder's name)")
    parser.add_argument("--minutes", type=float, help="training time of each (recipe, lr) run")
    parser.add_argument("--lr-scales", help="each recipe's conf/optim lrs times these (default: 0.5,1,2 with --quick)")
    parser.add_argument("--peer-lr-scales", help="nanoGPT's lrs times these instead (default: --lr-scales)")
    parser.add_argument(
        "--peer-beta2",
        type=lambda text: tuple(float(b) for b in text.split(",")),
        default=NANOGPT_BETA2,
        help="nanoGPT's β2 values (default: 0.95,0.99, both that its configs set)",
    )
    parser.add_argument(
        "--peer-sampling",
        type=lambda text: tuple(text.split(",")),
        default=SAMPLINGS,
        help="nanoGPT's batches: epoch (every window once an epoch, as ours), random (its get_batch), or both "
        "(default: epoch,random)",
    )
    parser.add_argument(
        "--peer-warmup",
        type=int,
        help="nanoGPT's warmup in optimizer steps (default: conf/optim/adamw.yaml's; a short run may want fewer)",
    )
    parser.add_argument(
        "--ablate",
        nargs="*",
        metavar="NAME",
        help="also ours with one choice changed at a time; names given: only the changes that contain one of them",
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads")
    parser.add_argument("--batch", type=int, help="sequences per step")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", type=Path, default=Path("outputs") / "speedrun")
    args = parser.parse_args()

    if bad := [x for x in args.peer_sampling if x not in SAMPLINGS]:
        parser.error(f"--peer-sampling {','.join(bad)}: must be among {', '.join(SAMPLINGS)}")
    settings = MODES["gpu" if args.gpu else "quick" if args.quick else "cpu"]
    args.minutes = args.minutes or settings["minutes"]
    args.lr_scales = args.lr_scales or settings["lr_scales"]
    args.evals, args.clip = settings["evals"], 1.0
    args.bf16 = args.compile = args.gpu
    device = torch.device("cuda" if args.gpu else "cpu")
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU")
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high")
    logging.basicConfig(level=logging.WARNING)
    name = args.name or ("builtin" if not args.data else Path(args.data[0]).expanduser().resolve().name)
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)

    folder, meta, tokenizer = prepare_corpus(args.data, settings["preset"], out)
    peers, ours, third = recipes(
        settings["preset"], meta["vocab_size"], args.peer_beta2, args.peer_warmup, args.peer_sampling
    )
    block = ours.model.block_size
    batch = args.batch or settings["batch"]
    data = Tokens(folder, meta["dtype"], block, batch, settings["val_windows"], eod_id(tokenizer), device)
    nbytes = token_bytes(tokenizer)
    val = np.fromfile(folder / "val.bin", dtype=meta["dtype"]).astype(np.int64)
    if int(nbytes[val].sum()) != len(tokenizer.decode(val.tolist()).encode()):
        raise SystemExit("token byte lengths do not add up to the validation text: bits per byte would be wrong")

    scales = [float(s) for s in args.lr_scales.split(",")]
    peer_scales = [float(s) for s in (args.peer_lr_scales or args.lr_scales).split(",")]
    runs = [Run(r, scaled(r.optim, s), data, nbytes, args) for r in peers for s in peer_scales]
    runs += [Run(ours, scaled(ours.optim, s), data, nbytes, args) for s in scales]
    runs += [Run(third, scaled(third.optim, s), data, nbytes, args) for s in scales]
    if args.ablate is not None:  # one choice at a time at ours' lrs (another optimizer sweeps its own)
        if 1.0 not in scales:
            raise SystemExit("--ablate compares with ours at its own lrs: --lr-scales must include 1")
        chosen = [r for r in ablations(peers[0], ours) if not args.ablate or any(n in r.name for n in args.ablate)]
        if not chosen:
            names = [r.name.removeprefix("ours, ") for r in ablations(peers[0], ours)]
            raise SystemExit(f"--ablate {' '.join(args.ablate)}: no change has that name; the changes: {names}")
        runs += [
            Run(r, scaled(r.optim, s), data, nbytes, args)
            for r in chosen
            for s in (scales if other_optimizer(r, ours) else [1.0])
        ]
    pa, pb = runs[0].params, runs[len(peers) * len(peer_scales)].params
    pc = runs[len(peers) * len(peer_scales) + len(scales)].params
    header = [
        f"corpus: {name} ({', '.join(args.data or ['docs/', 'llm/', 'data/sample/'])}): "
        f"{meta['train_tokens']:,} training tokens, {data.val_y.numel():,} validation tokens "
        f"({runs[0].val_bytes:,} bytes), one byte-level BPE of {meta['vocab_size']:,} tokens for both",
        f"models ({settings['preset']}-sized, T={block}, batch {data.B}): nanoGPT {pa:,} parameters, "
        f"ours {pb:,} ({pb / pa - 1:+.1%}{'' if abs(pb / pa - 1) <= 0.1 else ', OUTSIDE +-10%'}), "
        f"modded-nanogpt {pc:,} ({pc / pa - 1:+.1%}: its value embeddings; its head gets its own "
        f"{third.model.vocab_size * third.model.n_embd:,} at {third.optim.untie_at:.2f} of the run)",
        f"each run {args.minutes:g} min of training, lrs x {args.lr_scales} "
        f"(nanoGPT x {args.peer_lr_scales or args.lr_scales} at β2 "
        f"{' and '.join(f'{b:g}' for b in args.peer_beta2)}, {' and '.join(args.peer_sampling)} windows, "
        f"warmup {peers[0].optim.warmup_steps} steps; ours "
        f"{ours.optim.warmup_steps}, modded-nanogpt {third.optim.warmup_steps}), best vs best; "
        "runs interleaved step by step; "
        f"{provenance.hardware()}{'' if device.type == 'cuda' else f', {args.threads} threads'}",
        f"{time.strftime('%Y-%m-%d')}, {provenance.describe()}",
    ]
    print("\n".join(header), flush=True)
    print(f"training {len(runs)} runs, {len(runs) * args.minutes:g} min of training in all:", flush=True)
    start = time.perf_counter()
    train_all(runs)
    header.append(
        f"load average (1 min) during the runs: mean {np.mean(LOADS):.2f}, max {max(LOADS):.2f} "
        f"on {os.cpu_count()} cores; wall time {(time.perf_counter() - start) / 60:.1f} min"
    )
    table = report(runs, peers[0].name, ours, third.name, args, header)
    print("\n" + table)
    (out / "speedrun.md").write_text(table + "\n")
    write_csv(runs, out / "speedrun.csv")
    where = f"{settings['preset']}-sized, {provenance.hardware()}"
    title = f"{name}: val bpb against training time, {where}\n{time.strftime('%Y-%m-%d')}, {provenance.describe()}"
    plot(runs, peers[0].name, ours.name, third.name, out / "speedrun.png", title)
    command = " ".join(["python -m bench.speedrun", *sys.argv[1:]])
    (out / "speedrun.txt").write_text(" | ".join([f"{name}: val bpb against training time", command, *header]) + "\n")
    print(f"\nwrote {out / 'speedrun.md'}, {out / 'speedrun.csv'}, {out / 'speedrun.png'} and its caption speedrun.txt")


if __name__ == "__main__":
    main()
