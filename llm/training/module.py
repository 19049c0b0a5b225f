"""The LightningModule: owns the loss, the metrics, the optimizer and the schedule; the network is injected."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric, Metric

from llm.checkpoint import MODEL_CONFIG, TOKENIZER, add_entries
from llm.errors import ConfigError
from llm.model import GPT, document_mask
from llm.tokenizer import IGNORE
from llm.training.objective import mtp_weights_at, multi_token_losses, token_cross_entropy
from llm.training.optim import OptimConfig, build_optimizer, make_config, untie_head, untie_step
from llm.training.schedule import lr_schedule

log = logging.getLogger(__name__)


class Perplexity(MeanMetric):
    """exp of the token-weighted mean cross-entropy, summed across batches and ranks by torchmetrics."""

    def compute(self) -> torch.Tensor:
        return super().compute().exp()


class BitsPerByte(Metric):
    """Cross-entropy in bits per UTF-8 byte of the text scored: the sum of nats over every batch and rank,
    divided by ln 2 and by the sum of bytes. Unlike nats per token, it compares models whose tokenizers differ."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nats", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("bytes", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, nats: torch.Tensor, n_bytes: torch.Tensor) -> None:
        self.nats += nats.detach().float().sum()
        self.bytes += n_bytes.float().sum()

    def compute(self) -> torch.Tensor:
        return self.nats / math.log(2) / self.bytes


class LitGPT(L.LightningModule):
    def __init__(self, net: GPT, optim: Mapping | OptimConfig | None, compile: bool | str, seed: int) -> None:
        """optim: conf/optim/*.yaml as a mapping or an OptimConfig; None for a module that only scores.

        compile: torch.compile the network, "auto" (on CUDA), true or false. seed: of the dropout draws."""
        if compile not in ("auto", True, False):
            raise ConfigError(f"module.compile={compile!r} must be auto, true or false")
        super().__init__()
        self.net = net
        self.seed = seed
        self.optim = make_config(OptimConfig, optim, "optim") if isinstance(optim, Mapping) else optim
        self.compile = compile
        self.val_loss = MeanMetric()
        self.val_ppl = Perplexity()
        self.val_bpb = BitsPerByte()
        self.run_config: str | None = None  # the resolved YAML, saved in every checkpoint when set
        self.lora: dict | None = None  # set with the adapters (llm/train.py): LoRA's keys and base, for checkpoints
        self._cross_entropy = token_cross_entropy
        self.total_steps = 0  # optimizer steps of the whole run, set with the optimizer: the schedules' length
        if self.optim is not None and self.optim.untie_at is not None and not net.config.tie_embeddings:
            raise ConfigError(
                f"optim.untie_at={self.optim.untie_at} unties a tied output layer: it needs "
                "model.config.tie_embeddings=true (or optim.untie_at=null)"
            )

    def configure_model(self) -> None:
        use = self.device.type == "cuda" if self.compile == "auto" else bool(self.compile)
        if use:
            self.net.compile()  # in place: parameter names and checkpoints stay those of the plain module
            # Compiled, the upcast to float32 happens inside the fused softmax: the float32 copy of the
            # whole logits (B*T*V*4 bytes, 3.3 GB for GPT-2 at 16 x 1024) is never written.
            self._cross_entropy = torch.compile(token_cross_entropy)

    def on_fit_start(self) -> None:
        if self.optim.untie_at is not None and (self.trainer.world_size > 1 or self.lora):
            where = "LoRA freezes the embedding" if self.lora else "DDP and FSDP wrap the parameters at the start"
            raise ConfigError(f"optim.untie_at={self.optim.untie_at} trains on one device without LoRA: {where}")
        o = self.optim  # one line per rank: shows that every rank of a job trains the same hyperparameters
        width = self.net.config.n_embd
        peak = o.for_width(width)
        muon = "" if o.muon is None else f" muon.lr={o.muon.lr:g}"
        scaled = "" if peak.lr == o.lr else f" (x{o.width_scale(width):.3g} at width {width}: peaks {lr_text(peak)})"
        log.info(
            "rank %d/%d: optim.lr=%g weight_decay=%g%s%s",
            self.global_rank,
            self.trainer.world_size,
            o.lr,
            o.weight_decay,
            muon,
            scaled,
        )

    def forward(self, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of token ids idx (B, T). pos (B, T): each token's position in its document, where a window holds
        several (packed conversations, data.document_mask): each document then attends to itself alone."""
        if pos is None:
            return self.net(idx)
        return self.net(idx, input_pos=pos, mask=document_mask(pos))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._cross_entropy(logits, targets)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        o = self.optim
        untie = untie_step(o, self.net, self.total_steps) if o is not None else None
        accumulated = batch_idx % self.trainer.accumulate_grad_batches  # micro-batches of this step already run
        if untie is not None and self.trainer.global_step >= untie and accumulated == 0:
            untie_head(self.net, self.trainer.optimizers[0])
            log.info("step %d: the output layer untied from the token embedding (optim.untie_at)", untie)
        # Counter-based randomness: dropout in each micro-batch draws from a seed made of (seed, rank,
        # step, batch), all of which the checkpoint restores, so a resumed run repeats the same draws.
        # A saved generator state would not: loaders and validation also draw from the global RNG.
        lora_dropout = self.lora["dropout"] if self.lora else 0.0
        if self.net.config.dropout > 0 or lora_dropout > 0:  # nothing else in a training step draws random numbers
            step = self.trainer.global_step
            torch.manual_seed(hash((self.seed, self.global_rank, step, batch_idx)) % 2**63)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """batch: "input" and "target" (B, T), and "pos" where documents share a window (TokenWindows)."""
        logits, y = self(batch["input"], batch.get("pos")), batch["target"]
        o = self.optim
        if o is None or not o.mtp_weights:
            loss = self.loss(logits, y)
            self.log("train/loss", loss, prog_bar=True)
            return loss
        # multi-token prediction: train/loss stays the next-token loss, comparable with val/loss
        weights = mtp_weights_at(o.mtp_weights, self.trainer.global_step, self.total_steps, o.mtp_decay_frac)
        loss, objective = multi_token_losses(logits, y, weights, self._cross_entropy)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mtp_objective", objective)
        return objective

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # The last step: ask Lightning to stop, which makes it validate now if the last validation was
        # earlier. The final model is the one measured (val/loss is what a sweep minimises).
        if 0 < self.trainer.max_steps <= self.trainer.global_step:
            self.trainer.should_stop = True

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """batch: as training's, and "bytes" where the data knows them: the UTF-8 bytes of each window's targets."""
        y = batch["target"]
        loss = self.loss(self(batch["input"], batch.get("pos")), y)
        n = (y != IGNORE).sum()  # the targets scored: padding left out
        self.val_loss.update(loss, weight=n)
        self.val_ppl.update(loss, weight=n)
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/ppl", self.val_ppl)
        if "bytes" in batch:
            self.val_bpb.update(loss * n, batch["bytes"])
            self.log("val/bpb", self.val_bpb, prog_bar=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.log("lr", optimizer.param_groups[0]["lr"])  # AdamW's group comes first under optim=muon too
        muon = getattr(optimizer, "muon", None)
        if muon is not None:  # optim=muon: the hidden matrices' rate too
            self.log("lr_muon", muon.param_groups[0]["lr"])

    def configure_optimizers(self):
        o = self.optim
        if o is None:
            raise ConfigError("LitGPT was built without optim: give it conf/optim/*.yaml's keys to train")
        # Each parameter group's lr is its peak (optim.lr, or optim.muon.lr for the hidden matrices) times
        # the one schedule.
        opt = build_optimizer(self.net, o, fused=self.device.type == "cuda")
        self.total_steps = total = int(self.trainer.estimated_stepping_batches)
        schedule = lr_schedule(o.schedule, o.warmup_steps, total, o.min_lr_ratio, o.cooldown_frac)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": LambdaLR(opt, schedule), "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run must read the same token ids: its corpus must give the checkpoint's tokenizer. A run saved
        after its output layer was untied (optim.untie_at) resumes untied: the weights then load into two matrices."""
        saved = checkpoint.get(MODEL_CONFIG, {})
        if self.net.config.tie_embeddings and saved.get("tie_embeddings") is False and self.optim is not None:
            untie_head(self.net)  # before the state dict loads and before the optimizer is built
        trainer = self._trainer  # None when loaded outside a Trainer (LitGPT.load_from_checkpoint)
        tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is not None and TOKENIZER in checkpoint and checkpoint[TOKENIZER] != tokenizer.to_str():
            raise ConfigError(
                "ckpt_path: the checkpoint's tokenizer differs from the one built for this corpus (the documents "
                "changed since it was saved): its embeddings would read other token ids. Resume on the same corpus, "
                "or start a new run"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make the checkpoint self-sufficient for inference: model shape, tokenizer, run config (llm/checkpoint.py)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        template = getattr(datamodule, "chat_template", None)
        chat = template.to_dict() if template is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        add_entries(checkpoint, self.net.config, tokenizer, self.run_config, chat, self.lora)


def lr_text(o: OptimConfig) -> str:
    return f"lr {o.lr:.3g}" + ("" if o.muon is None else f", muon.lr {o.muon.lr:.3g}")
