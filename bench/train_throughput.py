"""Training throughput, three ways in one run: our LightningModule under the Lightning Trainer, the same
model in a plain PyTorch loop, and Hugging Face GPT-2 of the same shape (a bench-only dependency).

    python -m bench.train_throughput --quick                 # CPU: tiny and small presets
    python -m bench.train_throughput --preset gpt2-124m      # GPU: bf16-mixed, compiled, T=1024

Same batches, same optimizer settings, same loss (fp32 cross-entropy) for all three; ours is compiled
with the model (the upcast fused), Hugging Face's is applied to the compiled model's output, as usual.
Prints tokens/s, MFU (GPUs in llm/training/flops.py) and peak memory, and the ratios Lightning / plain
and ours / HF.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from llm.config import model_preset
from llm.model import GPT, GPTConfig
from llm.training import LitGPT
from llm.training.flops import peak_flops
from llm.training.module import token_cross_entropy
from llm.training.optim import optim_preset


def batches(config: GPTConfig, batch: int, seq: int, n: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, config.vocab_size, (n * batch, seq + 1), generator=g)
    rows = [{"input": row[:-1], "target": row[1:]} for row in data]  # LitGPT's batches: dicts of (B, T)
    return DataLoader(rows, batch_size=batch, pin_memory=torch.cuda.is_available())


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1 = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            sync()
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        sync()
        self.t1 = time.perf_counter()


def run_lightning(config, args, precision) -> float:
    torch.manual_seed(0)
    module = LitGPT(GPT(config), optim_preset("adamw", lr=3e-4, warmup_steps=10), compile=args.compile, seed=0)
    timer = Timer(args.warmup)
    trainer = L.Trainer(
        max_steps=args.warmup + args.steps,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        devices=1,
    )
    trainer.fit(module, train_dataloaders=batches(config, args.batch, args.seq, args.warmup + args.steps))
    return args.steps * args.batch * args.seq / (timer.t1 - timer.t0)


def plain_loop(model, step_loss, config, args, precision) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(enabled=precision == "16-mixed")
    t0 = 0.0
    for i, batch in enumerate(batches(config, args.batch, args.seq, args.warmup + args.steps)):
        x, y = batch["input"], batch["target"]
        if i == args.warmup:
            sync()
            t0 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = step_loss(model, x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    sync()
    return args.steps * args.batch * args.seq / (time.perf_counter() - t0)


def ours_loss(args):
    """The loss LitGPT uses: compiled with the model, so the float32 upcast of the logits is fused."""
    loss = torch.compile(token_cross_entropy) if args.compile else token_cross_entropy
    return lambda model, x, y: loss(model(x), y)


def hf_model(config: GPTConfig):
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    c = config
    no_dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf = GPT2Config(
        vocab_size=c.padded_vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        **no_dropout,
    )
    model = GPT2LMHeadModel(hf)
    model.config.use_cache = False
    return model


def hf_loss(model, x, y):
    return F.cross_entropy(model(input_ids=x).logits.float().flatten(0, 1), y.flatten())


def bench(name: str, args) -> dict:
    gpt2_shape = dict(pos="learned", norm="layernorm", mlp="gelu", bias=True, n_kv_head=None)
    config = model_preset(name, **({} if args.native else gpt2_shape))  # same shape as HF GPT-2 unless --native
    on_gpu = torch.cuda.is_available()
    precision = args.precision or ("bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true")
    args.seq = args.seq or config.block_size
    peak = peak_flops()
    flops_per_token = GPT(config).flops_per_token(args.seq)
    results = {}
    runs = (
        ("lightning", lambda: run_lightning(config, args, precision)),
        ("plain", lambda: plain_loop(_maybe_compile(GPT(config), args), ours_loss(args), config, args, precision)),
        (
            "hf-gpt2",
            lambda: (
                plain_loop(_maybe_compile(hf_model(config), args), hf_loss, config, args, precision)
                if hf_model(config) is not None
                else None
            ),
        ),
    )
    for _ in range(args.repeats):  # interleaved, best of: a busy machine slows every run alike
        for label, fn in runs:
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            torch.manual_seed(0)
            tps = fn()
            mem = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
            if label not in results or (tps or 0) > (results[label][0] or 0):
                results[label] = (tps, tps * flops_per_token / peak if (tps and peak) else None, mem)
    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"\n{name} ({'native' if args.native else 'GPT-2 shape'}), batch {args.batch} x {args.seq}, "
        f"{precision}, compile={args.compile}, {device}, torch {torch.__version__}"
    )
    print(f"| {'run':10} | {'tokens/s':>10} | {'MFU':>6} | {'peak GB':>7} |")
    print(f"| {'-' * 10} | {'-' * 10}: | {'-' * 6}: | {'-' * 7}: |")
    for label, (tps, mfu, mem) in results.items():
        fmt = lambda v, f: f.format(v) if v is not None else "n/a"  # noqa: E731
        print(f"| {label:10} | {fmt(tps, '{:,.0f}'):>10} | {fmt(mfu, '{:.1%}'):>6} | {fmt(mem, '{:.1f}'):>7} |")
    light, plain, hf = (results[k][0] for k in ("lightning", "plain", "hf-gpt2"))
    gap = 1 - light / plain
    print(f"Lightning / plain loop: {light / plain:.3f} (Lightning {abs(gap):.1%} {'slower' if gap > 0 else 'faster'})")
    if hf:
        print(f"ours (Lightning) / HF GPT-2: {light / hf:.2f}x")
    return results


def _maybe_compile(model, args):
    if model is not None and args.compile:
        model.compile()
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU mode: tiny and small presets, few steps")
    p.add_argument("--preset", default="gpt2-124m")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default: the preset's block_size)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, allocator)")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on GPUs with bf16, else 32-true")
    p.add_argument("--repeats", type=int, default=1, help="runs of each, interleaved; the fastest counts")
    p.add_argument("--native", action="store_true", help="our preset as configured (rope, RMSNorm, SwiGLU)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager on GPU")
    args = p.parse_args()
    if args.quick:
        args.compile = False
        args.batch, args.steps, args.warmup, args.repeats = 8, 20, 3, max(args.repeats, 3)
        for name in ("tiny", "small"):
            args.seq = None
            bench(name, args)
    else:
        args.compile = args.compile and torch.cuda.is_available()
        bench(args.preset, args)


if __name__ == "__main__":
    main()
