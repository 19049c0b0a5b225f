"""docs/training.md: the loss, the learning-rate schedule, gradient accumulation and number formats;
docs/scaling.md: what each model preset costs."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from llm.config import config_dir, model_preset
from llm.model import GPT
from llm.training.precision import resolve_precision
from llm.training.schedule import lr_schedule
from tools.docs_examples.printing import PRESETS, number, numbers, on_meta, table, text, toy_config

CONF_DIR = config_dir()


def train_defaults() -> dict:
    """optim (the default choice of the optim group), trainer and data defaults from conf/ (no Hydra needed)."""
    train = OmegaConf.load(CONF_DIR / "train.yaml")
    choice = next(item["optim"] for item in train.defaults if OmegaConf.is_dict(item) and "optim" in item)
    trainer = OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")
    data = OmegaConf.load(CONF_DIR / "data" / "default.yaml")
    return {
        "optim": dict(OmegaConf.load(CONF_DIR / "optim" / f"{choice}.yaml")),
        "max_steps": int(trainer.max_steps),
        "accumulate": int(trainer.accumulate_grad_batches),
        "batch_size": int(data.batch_size),
    }


def render_loss() -> str:
    from llm.training.module import LitGPT  # Lightning is heavy: import on use

    torch.manual_seed(0)
    logits = torch.tensor([[[2.0, 1.0, 0.1, -1.0]]])  # (B=1, T=1, vocab=4)
    p = F.softmax(logits[0, 0], dim=-1)
    lit = LitGPT(
        GPT(toy_config(vocab_size=4, block_size=4, n_layer=1, n_head=1, n_kv_head=1, n_embd=8)),
        None,
        False,
        0,
    )
    rows = []
    for target in (0, 1, 3):
        loss = float(lit.loss(logits, torch.tensor([[target]])))
        rows.append([target, number(float(p[target]), 3), number(loss, 3), number(math.exp(loss), 2)])
    init = []
    for name in PRESETS:
        c = model_preset(name)
        u = float(lit.loss(torch.zeros(1, 1, c.padded_vocab_size), torch.tensor([[0]])))
        init.append([f"`{name}`", f"{c.padded_vocab_size:,}", number(u, 3), f"{math.exp(u):,.0f}"])
    return "\n\n".join(
        [
            f"Logits `[2.0, 1.0, 0.1, -1.0]` over a 4-token vocabulary; softmax gives probabilities {numbers(p, 3)}:",
            table(["target", "p(target)", "loss = −ln p", "perplexity = e^loss"], rows),
            "A model that knows nothing gives every token the same logit; its loss is ln(vocabulary):",
            table(["preset", "logits per position", "loss", "perplexity"], init),
        ]
    )


def render_schedule() -> str:
    d = train_defaults()
    o = d["optim"]
    total = d["max_steps"]
    w = o["warmup_steps"]
    if o["schedule"] == "wsd":  # through the warmup, the plateau, the cooldown, and its end
        cool = total - max(1, round(o["cooldown_frac"] * total))
        middle = (w + (cool - w) // 2, cool - 1, cool, cool + (total - cool) // 2)
        call = f"warmup_stable_decay(step, warmup_steps={w}, total_steps={total}, min_lr_ratio={o['min_lr_ratio']}, "
        call += f"cooldown_frac={o['cooldown_frac']})"
    else:  # through the warmup, along the cosine, and its end
        middle = tuple(w + (total - w) * k // 4 for k in (1, 2, 3))
        call = f"warmup_cosine(step, warmup_steps={w}, total_steps={total}, min_lr_ratio={o['min_lr_ratio']})"
    steps = sorted({0, w // 5, w // 2, max(0, w - 1), w, *middle, total - 1, total})
    multiplier = lr_schedule(o["schedule"], w, total, o["min_lr_ratio"], o["cooldown_frac"])
    muon = o.get("muon")  # optim=muon: the hidden matrices' own peak, on the same schedule
    rows = []
    for step in steps:
        m = multiplier(step)
        row = [step, number(m, 4), f"{m * o['lr']:.2e}"]
        rows.append([*row, f"{m * muon['lr']:.2e}"] if muon else row)
    peaks = f"`optim.lr={o['lr']}`"
    columns = ["optimizer step", "multiplier", "lr"]
    if muon:
        peaks += f" (AdamW) and `optim.muon.lr={muon['lr']}` (Muon)"
        columns.append("muon lr")
    return f"`{call}` times {peaks}:\n\n" + table(columns, rows)


def accumulation_example(micro: int = 4, seed: int = 0) -> dict[str, float]:
    """Gradient of one batch of 8 vs `micro` accumulated micro-batches, each loss divided by `micro`."""
    from llm.training.module import LitGPT

    torch.manual_seed(seed)
    lit = LitGPT(GPT(toy_config(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)), None, False, 0)
    x = torch.randint(0, 64, (8, 8))
    y = torch.randint(0, 64, (8, 8))
    lit.loss(lit(x), y).backward()
    full = [p.grad.clone() for p in lit.parameters()]
    lit.zero_grad()
    for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=True):
        (lit.loss(lit(xs), ys) / micro).backward()  # what Trainer(accumulate_grad_batches=micro) does
    diff = max(float((a - p.grad).abs().max()) for a, p in zip(full, lit.parameters(), strict=True))
    scale = max(float(a.abs().max()) for a in full)
    return {"max_abs_diff": diff, "max_abs_grad": scale}


def render_accumulation() -> str:
    d = train_defaults()
    ex = accumulation_example()
    same = ex["max_abs_diff"] < 1e-6 * max(1.0, ex["max_abs_grad"])
    runs = (
        ("tiny (default)", d["batch_size"], model_preset("tiny").block_size),
        ("stdlib-small", 32, model_preset("small").block_size),
    )
    rows = []
    for name, batch, block in runs:
        for accum in (1, 4):
            rows.append([name, batch, block, accum, f"{batch * block * accum:,}"])
    header = ["run", "data.batch_size", "block_size", "accumulate_grad_batches", "tokens per optimizer step"]
    check = f"one batch of 8 vs 4 micro-batches of 2 (loss / 4 each): same gradient to 1e-6: {str(same).lower()}"
    return table(header, rows) + "\n\n" + text(check)


def render_precision() -> str:
    rows = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        fi = torch.finfo(dt)
        name = str(dt).removeprefix("torch.")
        rows.append([f"`{name}`", fi.bits, f"{fi.max:.3g}", f"{fi.tiny:.3g}", f"{fi.eps:.3g}"])
    g = torch.tensor(1e-8)
    scale = 65536.0
    scaled = (g * scale).half()
    lines = [
        f"gradient 1e-8 in float16: {float(g.half()):.3g}   (below float16's smallest value: lost)",
        f"x {scale:.0f} (loss scale) in float16: {float(scaled):.4g}   unscaled in float32: "
        f"{float(scaled.float() / scale):.3g}",
        f"gradient 1e-8 in bfloat16: {float(g.bfloat16()):.4g}   (same range as float32)",
        f"1 + 0.001 in bfloat16: {float(torch.tensor(1.001).bfloat16()):.4g}   in float16: "
        f"{float(torch.tensor(1.001).half()):.4g}   (bfloat16 keeps ~3 significant digits)",
        f"trainer.precision=auto on a CPU: {resolve_precision('auto', 'cpu')}",
    ]
    formats = table(["dtype", "bits", "largest", "smallest normal", "eps (1 + eps > 1)"], rows)
    return formats + "\n\n" + text("\n".join(lines))


CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022 (arXiv:2203.15556): compute-optimal rule of thumb


def render_scaling_presets() -> str:
    """conf/model/*.yaml: shape, parameters, FLOPs per token, memory besides activations, tokens per parameter."""
    from llm.training.optim import memory_estimate, optim_preset  # Lightning is heavy: import on use

    train = OmegaConf.load(CONF_DIR / "train.yaml")
    choice = next(item["optim"] for item in train.defaults if OmegaConf.is_dict(item) and "optim" in item)
    d = train_defaults()
    shapes, costs = [], []
    for name in PRESETS:
        c = model_preset(name)
        net = on_meta(c)
        n = net.num_params(non_embedding=False)
        heads = f"{c.n_head}" if c.n_kv_head == c.n_head else f"{c.n_head} ({c.n_kv_head} K/V)"
        shapes.append(
            [f"`{name}`", c.n_layer, c.n_embd, heads, c.block_size, f"{c.vocab_size:,}", f"{n:,} ({n / 1e6:.1f}M)"]
        )
        flops = net.flops_per_token(c.block_size)
        memory = sum(memory_estimate(net, optim_preset(choice)).values())
        per_step = d["batch_size"] * c.block_size * d["accumulate"]
        default_run = d["max_steps"] * per_step
        optimal = CHINCHILLA_TOKENS_PER_PARAM * n
        costs.append(
            [
                f"`{name}`",
                f"{flops / 1e6:,.1f}M ({flops / n:.2f} × N)",
                f"{memory / 2**20:,.0f} MiB",
                f"{per_step:,}",
                f"{default_run / 1e6:.2f}M ({default_run / n:.2f})",
                f"{optimal / 1e6:,.0f}M",
                f"{optimal / per_step:,.0f}",
                f"{flops * optimal:.1e}",
            ]
        )
    shape = table(["preset", "n_layer", "n_embd", "n_head", "block_size", "vocab_size", "parameters N"], shapes)
    cost = table(
        [
            "preset",
            "training FLOPs per token",
            f"weights + gradients + optimizer state (float32, optim={choice})",
            f"tokens per step (data.batch_size={d['batch_size']})",
            f"tokens of a {d['max_steps']}-step run (per parameter)",
            f"{CHINCHILLA_TOKENS_PER_PARAM} tokens per parameter",
            "steps for that",
            "training FLOPs for that",
        ],
        costs,
    )
    return shape + "\n\n" + cost


BLOCKS: dict[str, Callable[[], str]] = {
    "scaling-presets": render_scaling_presets,
    "loss": render_loss,
    "schedule": render_schedule,
    "accumulation": render_accumulation,
    "precision": render_precision,
}
