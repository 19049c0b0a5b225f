"""Peak memory of one fine-tuning step: every weight trained (AdamW) against LoRA adapters (lora.r), same model.

    python -m bench.finetune_memory                      # Qwen2.5-0.5B's shape, random weights, 1 x 128 tokens, CPU
    python -m bench.finetune_memory --device cuda --seq 1024 --batch 4

Each mode runs in a subprocess of its own, so one's peak cannot hide in the other's: the model is built (random
weights of Qwen2.5-0.5B's shape: 24 layers, 896 wide, 14 heads, 2 K/V heads of 64, SwiGLU 4864, biases on q, k, v,
vocabulary 151,936, tied embeddings), the adapters added (llm/lora.py, as lora.r does), the optimizer built as
training builds it (build_optimizer, optim=adamw as experiment=finetune), then one forward, backward and step. On a
CPU the peak is the process's resident set (getrusage's ru_maxrss: everything, torch itself included); on a GPU,
torch.cuda.max_memory_allocated. Prints both peaks, the estimate training logs (weights + gradients + optimizer state)
and the ratio LoRA / full.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from llm.lora import TARGETS, LoraConfig, add_adapters, count_parameters
from llm.model import GPT, GPTConfig
from llm.training.module import token_cross_entropy
from llm.training.optim import build_optimizer, memory_estimate, optim_preset

QWEN25_05B = dict(
    vocab_size=151936,
    n_layer=24,
    n_head=14,
    n_kv_head=2,
    n_embd=896,
    head_dim=64,
    mlp="swiglu",
    mlp_hidden=4864,
    qkv_bias=True,
    bias=False,
    norm="rmsnorm",
    norm_eps=1e-6,
    pos="rope",
    rope_base=1000000.0,
    qk_norm=False,
    tie_embeddings=True,
    attn="sdpa",
    dropout=0.0,
    zero_init_proj=False,
    logit_softcap=None,
    value_embeds=0,
    unet_skips=False,
)


def one_step(mode: str, r: int, batch: int, seq: int, device: str) -> dict:
    """Build the model and take one fine-tuning step; what it cost."""
    torch.manual_seed(0)
    net = GPT(GPTConfig(block_size=seq, **QWEN25_05B)).to(device)
    if mode == "lora":
        add_adapters(net, LoraConfig(r=r, alpha=2 * r, dropout=0.0, targets=list(TARGETS)))
    optim = optim_preset("adamw", lr=1e-4, weight_decay=0.0, warmup_steps=0)
    opt = build_optimizer(net, optim, fused=device == "cuda")
    x = torch.randint(0, QWEN25_05B["vocab_size"], (batch, seq + 1), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = token_cross_entropy(net(x[:, :-1]), x[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    trainable, total = count_parameters(net)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode,
        "trainable": trainable,
        "total": total,
        "estimate_bytes": sum(memory_estimate(net, optim).values()),
        "peak_bytes": peak if device == "cuda" else peak * 1024,  # ru_maxrss is in KiB on Linux
        "step_s": seconds,
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2 r, every block's four matrices)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.child, args.r, args.batch, args.seq, args.device)))
        return
    what = "resident set" if args.device == "cpu" else "torch.cuda.max_memory_allocated"
    print(f"Qwen2.5-0.5B shape, random weights; one step of {args.batch} x {args.seq} tokens on {args.device}; {what}")
    print(f"torch {torch.__version__}; peft {_version('peft')}")
    results = {}
    for mode in ("full", "lora"):
        cmd = [sys.executable, "-m", "bench.finetune_memory", "--child", mode, *_passed(args)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{mode}: exit {out.returncode}\n{out.stderr[-3000:]}")
        res = results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        label = "full fine-tuning" if mode == "full" else f"LoRA r={args.r}"
        print(
            f"{label:>17}: trains {res['trainable']:,} of {res['total']:,} parameters "
            f"({100 * res['trainable'] / res['total']:.2f}%); estimate {res['estimate_bytes'] / 2**30:.2f} GiB; "
            f"peak {res['peak_bytes'] / 2**30:.2f} GiB; step {res['step_s']:.1f} s"
        )
    ratio = results["lora"]["peak_bytes"] / results["full"]["peak_bytes"]
    print(f"LoRA / full peak: {ratio:.2f} ({100 * ratio:.0f}%)")


def _passed(args: argparse.Namespace) -> list[str]:
    return ["--r", str(args.r), "--batch", str(args.batch), "--seq", str(args.seq), "--device", args.device]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
