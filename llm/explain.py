"""Worked examples for the docs, computed by the project's own classes with fixed seeds.

Each `render_*` function returns a markdown block; the docs embed it between
`<!-- explain:NAME -->` and `<!-- /explain -->`, and tests/test_docs.py regenerates every block and
compares it with the doc text, so a printed number can never drift from the code.

    python -m llm.explain               # print every block
    python -m llm.explain attention     # print one block
    python -m llm.explain --write       # rewrite the blocks in docs/*.md
    python -m llm.explain --check       # exit 1 if a doc's block differs from the code's output
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from llm.config import model_preset
from llm.model import (
    GPT,
    MLP,
    Attention,
    GPTConfig,
    RMSNorm,
    apply_rope,
    explicit_attention,
    make_norm,
    repeat_kv,
    rope_cache,
)
from llm.tokenizer import train_tokenizer
from llm.training.precision import resolve_precision
from llm.training.schedule import warmup_cosine

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = REPO_ROOT / "docs"
CONF_DIR = REPO_ROOT / "conf"
TOKENS = ["Hello", " World", "!"]
BLOCK_RE = re.compile(r"(<!-- explain:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /explain -->)", re.S)


# ---------------------------------------------------------------------------------------------- formatting


def _num(v: float, digits: int) -> str:
    if math.isinf(v):
        return "-inf" if v < 0 else "inf"
    s = f"{v:.{digits}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s  # no "-0.00"


def matrix(t: torch.Tensor, rows: Sequence[str] | None = None, cols: Sequence[str] | None = None,
           digits: int = 2) -> str:  # fmt: skip
    """A 1-D or 2-D tensor as an aligned text table with row and column labels."""
    t = t.detach().float()
    if t.dim() == 1:
        t = t[None]
    rows = list(rows) if rows is not None else [str(i) for i in range(t.shape[0])]
    cols = list(cols) if cols is not None else [str(j) for j in range(t.shape[1])]
    cells = [[_num(float(v), digits) for v in row] for row in t]
    width = max(len(c) for c in [*cols, *(x for r in cells for x in r)]) + 2
    left = max(len(r) for r in rows) + 1
    lines = [" " * left + "".join(c.rjust(width) for c in cols)]
    lines += [r.ljust(left) + "".join(x.rjust(width) for x in cells[i]) for i, r in enumerate(rows)]
    return "\n".join(lines)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def text(*parts: str) -> str:
    return "```text\n" + "\n\n".join(parts) + "\n```"


def _labels(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _rounded(shape: tuple[int, ...], gen: torch.Generator, scale: float = 0.5) -> torch.Tensor:
    """Random numbers rounded to one decimal: products stay checkable with a pencil."""
    return (torch.randn(shape, generator=gen) * scale * 10).round() / 10


def on_meta(config: GPTConfig) -> GPT:
    """The model built on the meta device: shapes and parameter counts without memory or time."""
    with torch.device("meta"):
        return GPT(config)


PRESETS = ("tiny", "small", "gpt2-124m")
# The worked examples show the plain transformer: no QK-norm, no soft-cap, tied embeddings, scaled init.
SWITCHES_OFF = dict(qk_norm=False, zero_init_proj=False, logit_softcap=None, tie_embeddings=True)


# ---------------------------------------------------------------------------------------------- attention


def attention_config(n_kv_head: int = 2) -> GPTConfig:
    # learned positions: Attention gets rope=None, so the example shows attention alone
    switches = dict(attn="explicit", pos="learned", bias=False, **SWITCHES_OFF)
    return GPTConfig(vocab_size=64, block_size=3, n_layer=1, n_head=2, n_kv_head=n_kv_head, n_embd=4, **switches)


def attention_example(seed: int = 0, n_kv_head: int = 2) -> dict[str, torch.Tensor]:
    """Every intermediate of llm.model.Attention on 3 tokens, 4 channels, 2 heads of size 2.

    Returns x, W_q/W_k/W_v/W_proj, Q/K/V, per head h: scores_h, masked_h, weights_h, out_h; concat, y.
    Checks that the step-by-step result equals explicit_attention and Attention.forward.
    """
    cfg = attention_config(n_kv_head)
    gen = torch.Generator().manual_seed(seed)
    attn = Attention(cfg).eval()
    with torch.no_grad():
        attn.qkv.weight.copy_(_rounded(attn.qkv.weight.shape, gen))
        attn.proj.weight.copy_(_rounded(attn.proj.weight.shape, gen))
    x = _rounded((len(TOKENS), cfg.n_embd), gen, scale=1.0)
    C, hs, nh, nkv = cfg.n_embd, cfg.head_size, cfg.n_head, cfg.n_kv_head
    W_q, W_k, W_v = attn.qkv.weight.detach().split([C, nkv * hs, nkv * hs], dim=0)
    ex: dict[str, torch.Tensor] = {"x": x, "W_q": W_q, "W_k": W_k, "W_v": W_v, "W_proj": attn.proj.weight.detach()}
    ex["Q"], ex["K"], ex["V"] = x @ W_q.T, x @ W_k.T, x @ W_v.T
    T = len(TOKENS)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    outs = []
    for h in range(nh):
        kv = h // (nh // nkv)  # grouped-query: query head h reads K/V head h // (nh / n_kv)
        q, k, v = (
            ex["Q"][:, h * hs : (h + 1) * hs],
            ex["K"][:, kv * hs : (kv + 1) * hs],
            ex["V"][:, kv * hs : (kv + 1) * hs],
        )
        scores = q @ k.T / math.sqrt(hs)
        masked = scores.masked_fill(~causal, float("-inf"))
        weights = F.softmax(masked, dim=-1)
        ex[f"scores_{h}"], ex[f"masked_{h}"], ex[f"weights_{h}"] = scores, masked, weights
        ex[f"out_{h}"] = weights @ v
        outs.append(ex[f"out_{h}"])
    ex["concat"] = torch.cat(outs, dim=-1)
    ex["y"] = ex["concat"] @ ex["W_proj"].T
    with torch.no_grad():  # the same numbers from the project's code paths
        qh = ex["Q"].view(T, nh, hs).transpose(0, 1)[None]  # (1, nh, T, hs)
        kh = repeat_kv(ex["K"].view(T, nkv, hs).transpose(0, 1)[None], nh // nkv)
        vh = repeat_kv(ex["V"].view(T, nkv, hs).transpose(0, 1)[None], nh // nkv)
        torch.testing.assert_close(explicit_attention(qh, kh, vh, None)[0].transpose(0, 1).reshape(T, C), ex["concat"])
        torch.testing.assert_close(attn(x[None], None)[0], ex["y"])
    return ex


def render_attention() -> str:
    ex = attention_example()
    tok = [repr(t) for t in TOKENS]
    ch = _labels("c", 4)
    return text(
        "x: the input to Attention, one row per token (3 tokens x 4 channels)\n" + matrix(ex["x"], tok, ch, 1),
        "W_q, W_k, W_v: rows 0-3, 4-7, 8-11 of attn.qkv.weight (each 4 out x 4 in)\n"
        + matrix(
            torch.cat([ex["W_q"], ex["W_k"], ex["W_v"]]), _labels("q", 4) + _labels("k", 4) + _labels("v", 4), ch, 1
        ),  # fmt: skip
        "Q = x W_qᵀ\n" + matrix(ex["Q"], tok, ch),
        "K = x W_kᵀ\n" + matrix(ex["K"], tok, ch),
        "V = x W_vᵀ\n" + matrix(ex["V"], tok, ch),
    )


def render_attention_head(h: int) -> str:
    ex = attention_example()
    tok = [repr(t) for t in TOKENS]
    cols = [f"{t}" for t in tok]
    return text(
        f"head {h}: scores = Q_{h} K_{h}ᵀ / √2 (row: query, column: key)\n" + matrix(ex[f"scores_{h}"], tok, cols),
        "causal mask: a query may not look at later keys\n" + matrix(ex[f"masked_{h}"], tok, cols),
        "softmax over each row: the attention weights\n" + matrix(ex[f"weights_{h}"], tok, cols),
        f"out_{h} = weights V_{h}\n" + matrix(ex[f"out_{h}"], tok, _labels("d", 2)),
    )


def render_attention_out() -> str:
    ex = attention_example()
    tok = [repr(t) for t in TOKENS]
    ch = _labels("c", 4)
    return text(
        "concat = [out_0 | out_1]\n" + matrix(ex["concat"], tok, ch),
        "y = concat W_projᵀ: the output of Attention.forward, added to the residual stream\n"
        + matrix(ex["y"], tok, ch),
    )


def render_softmax() -> str:
    rows = []
    for scores in ([0.5, 0.3], [2.0, 1.0, 0.1], [0.0, 0.0, 0.0, 0.0], [10.0, 0.0]):
        p = F.softmax(torch.tensor(scores), dim=-1)
        rows.append([", ".join(_num(s, 1) for s in scores), ", ".join(_num(float(v), 2) for v in p)])
    return table(["scores", "softmax"], rows)


def render_gqa() -> str:
    rows = []
    for name in PRESETS:
        c = model_preset(name)
        per_token = 2 * c.n_kv_head * c.head_size * c.n_layer
        full = 2 * c.n_head * c.head_size * c.n_layer
        rows.append([f"`{name}`", c.n_head, c.n_kv_head, c.head_size, f"{per_token:,}", f"{full:,}"])
    mha, gqa = Attention(attention_config(2)), Attention(attention_config(1))
    k = torch.arange(6.0).view(1, 1, 3, 2)  # (B, n_kv=1, T=3, hs=2)
    return "\n\n".join([
        table(["preset", "n_head", "n_kv_head", "head size", "K/V values cached per token", "with n_kv_head = n_head"],
              rows),
        text(
            f"attn.qkv in the worked example: {tuple(mha.qkv.weight.shape)} with 2 K/V heads, "
            f"{tuple(gqa.qkv.weight.shape)} with 1",
            "repeat_kv(K, 2): one K/V head (B, 1, T, 2) serves both query heads (B, 2, T, 2)\n"
            + "\n".join(f"head {h}\n" + matrix(t, [repr(x) for x in TOKENS], _labels("d", 2), 0)
                        for h, t in enumerate(repeat_kv(k, 2)[0])),
        ),
    ])  # fmt: skip


# ---------------------------------------------------------------------------------------------- positions


def render_rope() -> str:
    hs = 4
    cos, sin = rope_cache(16, hs)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    q = torch.tensor([1.0, 0.5, -0.5, 1.0])
    k = torch.tensor([0.5, 1.0, 1.0, 0.5])

    def at(v: torch.Tensor, pos: int) -> torch.Tensor:
        return apply_rope(v.view(1, 1, 1, hs), cos[pos : pos + 1], sin[pos : pos + 1]).view(hs)

    pairs = ((0, 0), (5, 5), (1, 0), (2, 1), (9, 8), (2, 0), (7, 5))
    rows = [[m, n, m - n, _num(float(at(q, m) @ at(k, n)), 4)] for m, n in pairs]
    return "\n\n".join([
        text(
            "rope_cache(16, head_size=4), positions 0-2; frequencies 1 / 10000^(2i/4) = "
            + ", ".join(_num(float(f), 2) for f in inv_freq),
            "cos (position x pair)\n" + matrix(cos[:3], _labels("pos ", 3), ["pair 0", "pair 1"], 4),
            "sin\n" + matrix(sin[:3], _labels("pos ", 3), ["pair 0", "pair 1"], 4),
            "q = [1.0, 0.5, -0.5, 1.0] rotated by apply_rope at positions 0, 1, 2\n"
            + matrix(torch.stack([at(q, p) for p in range(3)]), _labels("pos ", 3), _labels("d", 4), 4),
        ),
        "The score of q at position m with k = [0.5, 1.0, 1.0, 0.5] at position n depends only on m − n:",
        table(["m (query)", "n (key)", "m − n", "rotated q · rotated k"], rows),
    ])  # fmt: skip


def render_embeddings() -> str:
    rows = []
    for name in PRESETS:
        c = model_preset(name)
        m = on_meta(c)
        wpe = f"{m.wpe.weight.numel():,}" if m.wpe is not None else "none (rotary)"
        rows.append([f"`{name}`", f"{c.vocab_size:,}", f"{c.padded_vocab_size:,}", c.n_embd,
                     f"{m.wte.weight.numel():,}", wpe, str(m.lm_head.weight is m.wte.weight).lower(),
                     f"{m.num_params():,}"])  # fmt: skip
    return table(["preset", "vocab_size", "padded", "n_embd", "wte parameters", "wpe parameters", "lm_head tied",
                  "num_params()"], rows)  # fmt: skip


# ---------------------------------------------------------------------------------------------- tokenizer

TOKENIZER_TEXT = (
    "Hello World! Hello world, hello there.\n"
    "def hello_world():\n    print('Hello World!')\n"
    "The world says hello. Hello, World!\n"
) * 3


def tokenizer_example(vocab_size: int = 300):
    """A byte-level BPE learned by llm.tokenizer.train_tokenizer from TOKENIZER_TEXT."""
    return train_tokenizer([TOKENIZER_TEXT], vocab_size=vocab_size)


def render_tokenizer() -> str:
    tok = tokenizer_example()
    vocab = tok.get_vocab()
    n_base = 256 + 1  # the 256 byte symbols and <|endoftext|>
    learned = sorted((i, t) for t, i in vocab.items() if i >= n_base)
    lines = []
    for s in ("Hello World!", "hello_world", "Hello, café"):
        enc = tok.encode(s)
        pieces = "  ".join(f"{t!r}:{i}" for t, i in zip(enc.tokens, enc.ids, strict=True))
        lines.append(f"{s!r:16} -> {len(enc.ids):2} tokens  {pieces}")
        assert tok.decode(enc.ids) == s  # byte-level: every string round-trips
    return text(
        f"vocabulary: {tok.get_vocab_size()} tokens = 256 bytes + <|endoftext|> (id {vocab['<|endoftext|>']}) "
        f"+ {len(learned)} learned merges",
        "first learned tokens (id: token)\n" + "\n".join(f"{i}: {t!r}" for i, t in learned[:12]),
        "\n".join(lines),
    )


# ---------------------------------------------------------------------------------------------- norm and MLP


def render_norm() -> str:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [1.0, -1.0, 1.0, -1.0]])
    rms = RMSNorm(4)
    ln = make_norm(GPTConfig(n_embd=4, n_head=1, norm="layernorm", **SWITCHES_OFF))
    with torch.no_grad():
        r, l = rms(x), ln(x)
    rows = [[", ".join(_num(float(v), 0) for v in x[i]), _num(float(x[i].pow(2).mean().sqrt()), 4),
             ", ".join(_num(float(v), 4) for v in r[i]), ", ".join(_num(float(v), 4) for v in l[i])]
            for i in range(3)]  # fmt: skip
    return table(["x", "rms(x)", "RMSNorm(x)", "LayerNorm(x)"], rows)


def mlp_example(seed: int = 0) -> dict[str, torch.Tensor]:
    """llm.model.MLP (SwiGLU) with n_embd=4, mlp_hidden=2 on one token, every intermediate."""
    cfg = GPTConfig(n_embd=4, n_head=1, mlp="swiglu", mlp_hidden=2, **SWITCHES_OFF)
    mlp = MLP(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mlp.fc.weight.copy_(_rounded(mlp.fc.weight.shape, gen))
        mlp.proj.weight.copy_(_rounded(mlp.proj.weight.shape, gen))
        x = _rounded((4,), gen, scale=1.0)
        h = mlp.fc(x)
        gate, value = h.chunk(2)
        ex = {"x": x, "W_fc": mlp.fc.weight.clone(), "W_proj": mlp.proj.weight.clone(), "gate": gate, "value": value,
              "silu_gate": F.silu(gate), "hidden": F.silu(gate) * value}  # fmt: skip
        ex["y"] = mlp.proj(ex["hidden"])
        torch.testing.assert_close(mlp(x), ex["y"])
    return ex


def render_activations() -> str:
    xs = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    return text(matrix(torch.stack([F.relu(xs), F.gelu(xs, approximate="tanh"), F.silu(xs)]),
                       ["relu", "gelu (tanh)", "silu"], [_num(float(v), 1) for v in xs], 3))  # fmt: skip


def render_mlp() -> str:
    ex = mlp_example()
    rows = []
    for name in PRESETS:
        c = model_preset(name)
        for kind in ("gelu", "swiglu", "relu2"):
            cc = GPTConfig(**{**c.to_dict(), "mlp": kind, "mlp_hidden": None})
            n = sum(p.numel() for p in MLP(cc).to("meta").parameters() if p.dim() == 2)
            mark = " (preset)" if kind == c.mlp else ""
            rows.append([f"`{name}`", kind + mark, c.n_embd, cc.mlp_hidden, f"{n:,}"])
    return "\n\n".join([
        text(
            "x (one token, 4 channels)\n" + matrix(ex["x"], ["x"], _labels("c", 4), 1),
            "mlp.fc.weight: 2 gate rows, then 2 value rows\n"
            + matrix(ex["W_fc"], ["gate0", "gate1", "value0", "value1"], _labels("c", 4), 1),
            "gate, value = fc(x).chunk(2); hidden = silu(gate) * value\n"
            + matrix(torch.stack([ex["gate"], ex["value"], ex["silu_gate"], ex["hidden"]]),
                     ["gate", "value", "silu(gate)", "hidden"], _labels("h", 2)),
            "y = proj(hidden)\n" + matrix(ex["y"], ["y"], _labels("c", 4)),
        ),
        table(["preset", "mlp", "n_embd", "mlp_hidden", "weights per MLP"], rows),
    ])  # fmt: skip


# ---------------------------------------------------------------------------------------------- training


def train_defaults() -> dict:
    """optim, trainer and data defaults from conf/ (no Hydra needed)."""
    train = OmegaConf.load(CONF_DIR / "train.yaml")
    choice = next(item["optim"] for item in train.defaults if OmegaConf.is_dict(item) and "optim" in item)
    optim = OmegaConf.load(CONF_DIR / "optim" / f"{choice}.yaml")
    trainer = OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")
    data = OmegaConf.load(CONF_DIR / "data" / "default.yaml")
    return {"optim": dict(optim), "max_steps": int(trainer.max_steps),
            "accumulate": int(trainer.accumulate_grad_batches), "batch_size": int(data.batch_size)}  # fmt: skip


def render_loss() -> str:
    from llm.training.module import LitGPT  # Lightning is heavy: import on use

    torch.manual_seed(0)
    logits = torch.tensor([[[2.0, 1.0, 0.1, -1.0]]])
    p = F.softmax(logits[0, 0], dim=-1)
    lit = LitGPT(GPT(GPTConfig(vocab_size=4, block_size=4, n_layer=1, n_head=1, n_embd=8, **SWITCHES_OFF)))
    rows = []
    for target in (0, 1, 3):
        loss = float(lit.loss(logits, torch.tensor([[target]])))
        rows.append([target, _num(float(p[target]), 3), _num(loss, 3), _num(math.exp(loss), 2)])
    init = []
    for name in PRESETS:
        c = model_preset(name)
        u = float(lit.loss(torch.zeros(1, 1, c.padded_vocab_size), torch.tensor([[0]])))
        init.append([f"`{name}`", f"{c.padded_vocab_size:,}", _num(u, 3), f"{math.exp(u):,.0f}"])
    return "\n\n".join([
        "Logits `[2.0, 1.0, 0.1, -1.0]` over a 4-token vocabulary; softmax gives probabilities "
        + ", ".join(_num(float(v), 3) for v in p) + ":",
        table(["target", "p(target)", "loss = −ln p", "perplexity = e^loss"], rows),
        "A model that knows nothing gives every token the same logit; its loss is ln(vocabulary):",
        table(["preset", "logits per position", "loss", "perplexity"], init),
    ])  # fmt: skip


def render_schedule() -> str:
    d = train_defaults()
    o, total = d["optim"], d["max_steps"]
    muon = o.get("muon")  # optim=muon: the hidden matrices' own peak, on the same schedule
    rows = []
    w = o["warmup_steps"]
    steps = sorted({0, w // 5, w // 2, w - 1, w, *(w + (total - w) * k // 4 for k in (1, 2, 3)), total - 1, total})
    for step in steps:  # through the warmup, along the cosine, and its end
        m = warmup_cosine(step, o["warmup_steps"], total, o["min_lr_ratio"])
        row = [step, _num(m, 4), f"{m * o['lr']:.2e}"]
        rows.append(row + [f"{m * muon['lr']:.2e}"] if muon else row)
    peaks = f"`optim.lr={o['lr']}`"
    columns = ["optimizer step", "multiplier", "lr"]
    if muon:
        peaks += f" (AdamW) and `optim.muon.lr={muon['lr']}` (Muon)"
        columns.append("muon lr")
    schedule = f"warmup_cosine(step, warmup_steps={w}, total_steps={total}, min_lr_ratio={o['min_lr_ratio']})"
    return f"`{schedule}` times {peaks}:\n\n" + table(columns, rows)


def accumulation_example(micro: int = 4, seed: int = 0) -> dict[str, float]:
    """Gradient of one batch of 8 vs `micro` accumulated micro-batches, each loss divided by `micro`."""
    from llm.training.module import LitGPT

    torch.manual_seed(seed)
    lit = LitGPT(GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16, **SWITCHES_OFF)))
    x, y = torch.randint(0, 64, (8, 8)), torch.randint(0, 64, (8, 8))
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
    rows = []
    for name, batch, block in (("tiny (default)", d["batch_size"], model_preset("tiny").block_size),
                               ("stdlib-small", 32, model_preset("small").block_size)):  # fmt: skip
        for accum in (1, 4):
            rows.append([name, batch, block, accum, f"{batch * block * accum:,}"])
    return "\n\n".join([
        table(["run", "data.batch_size", "block_size", "accumulate_grad_batches", "tokens per optimizer step"], rows),
        text(f"one batch of 8 vs 4 micro-batches of 2 (loss / 4 each): same gradient to 1e-6: {str(same).lower()}"),
    ])  # fmt: skip


def render_precision() -> str:
    rows = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        fi = torch.finfo(dt)
        name = str(dt).removeprefix("torch.")
        rows.append([f"`{name}`", fi.bits, f"{fi.max:.3g}", f"{fi.tiny:.3g}", f"{fi.eps:.3g}"])
    g = torch.tensor(1e-8)
    scale = 65536.0
    lines = [
        f"gradient 1e-8 in float16: {float(g.half()):.3g}   (below float16's smallest value: lost)",
        f"x {scale:.0f} (loss scale) in float16: {float((g * scale).half()):.4g}   unscaled in float32: "
        f"{float((g * scale).half().float() / scale):.3g}",
        f"gradient 1e-8 in bfloat16: {float(g.bfloat16()):.4g}   (same range as float32)",
        f"1 + 0.001 in bfloat16: {float(torch.tensor(1.001).bfloat16()):.4g}   in float16: "
        f"{float(torch.tensor(1.001).half()):.4g}   (bfloat16 keeps ~3 significant digits)",
        f"trainer.precision=auto on a CPU: {resolve_precision('auto', 'cpu')}",
    ]
    return "\n\n".join([table(["dtype", "bits", "largest", "smallest normal", "eps (1 + eps > 1)"], rows),
                        text("\n".join(lines))])  # fmt: skip


# ---------------------------------------------------------------------------------------------- attention maps


def attention_maps(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """Attention weights (n_head, T, T) of every layer for token ids idx (1, T).

    Captures each layer's input, recomputes q and k as Attention.forward does, and calls
    explicit_attention with V = the identity: softmax(QKᵀ/√d + mask) @ I is the weight matrix itself.
    """
    inputs: list[tuple] = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, args: inputs.append(args)) for b in model.blocks]
    try:
        with torch.no_grad():
            model(idx)
    finally:
        for h in hooks:
            h.remove()
    maps = []
    for block, args in zip(model.blocks, inputs, strict=True):
        a, (x, rope) = block.attn, args[:2]
        B, T, C = x.shape
        with torch.no_grad():
            q, k, _ = a.qkv(x).split([C, a.n_kv_head * a.head_size, a.n_kv_head * a.head_size], dim=-1)
            q = q.view(B, T, a.n_head, a.head_size).transpose(1, 2)  # (B, nh, T, hs)
            k = k.view(B, T, a.n_kv_head, a.head_size).transpose(1, 2)  # (B, n_kv, T, hs)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            k = repeat_kv(k, a.n_head // a.n_kv_head)
            eye = torch.eye(T, dtype=q.dtype, device=q.device).expand(B, a.n_head, T, T)
            maps.append(explicit_attention(q.float(), k.float(), eye.float(), None)[0])  # (nh, T, T)
    return maps


# ---------------------------------------------------------------------------------------------- blocks and CLI

BLOCKS: dict[str, Callable[[], str]] = {
    "attention": render_attention,
    "attention-head0": lambda: render_attention_head(0),
    "attention-head1": lambda: render_attention_head(1),
    "attention-out": render_attention_out,
    "softmax": render_softmax,
    "gqa": render_gqa,
    "rope": render_rope,
    "embeddings": render_embeddings,
    "tokenizer": render_tokenizer,
    "norm": render_norm,
    "activations": render_activations,
    "mlp": render_mlp,
    "loss": render_loss,
    "schedule": render_schedule,
    "accumulation": render_accumulation,
    "precision": render_precision,
}


def doc_blocks(text_: str) -> list[tuple[str, str]]:
    """(name, body) of every explain block in a markdown text."""
    return [(m["name"], m["body"]) for m in BLOCK_RE.finditer(text_)]


def rewrite(text_: str, cache: dict[str, str] | None = None) -> str:
    """text_ with every explain block's body regenerated."""
    cache = {} if cache is None else cache

    def sub(m: re.Match) -> str:
        name = m["name"]
        if name not in BLOCKS:
            raise KeyError(f"unknown explain block {name!r}; known: {sorted(BLOCKS)}")
        if name not in cache:
            cache[name] = BLOCKS[name]()
        return f"{m[1]}{cache[name]}\n{m[4]}"

    return BLOCK_RE.sub(sub, text_)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.explain", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"blocks to print (default: all): {', '.join(BLOCKS)}")
    parser.add_argument("--write", action="store_true", help="rewrite the blocks in docs/*.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when a doc's block differs from the code")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.write or args.check:
        cache: dict[str, str] = {}
        stale = []
        for path in sorted(DOCS_DIR.glob("*.md")):
            old = path.read_text()
            new = rewrite(old, cache)
            if new != old:
                stale.append(path)
                if args.write:
                    path.write_text(new)
        for path in stale:
            log.info("%s %s", "rewrote" if args.write else "differs:", path.relative_to(REPO_ROOT))
        return 1 if stale and args.check else 0
    for name in args.names or BLOCKS:
        print(f"<!-- explain:{name} -->\n{BLOCKS[name]()}\n<!-- /explain -->\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
