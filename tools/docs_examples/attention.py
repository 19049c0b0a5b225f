"""docs/attention.md: one Attention layer on three tokens, every intermediate printed."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from llm.config import model_preset
from llm.model import Attention, GPTConfig, explicit_attention, repeat_kv
from tools.docs_examples.printing import PRESETS, labels, matrix, number, numbers, rounded, table, text, toy_config

TOKENS = ["Hello", " World", "!"]
TOKEN_LABELS = [repr(t) for t in TOKENS]


def attention_config(n_kv_head: int = 2, qk_norm: bool = False) -> GPTConfig:
    """4 channels, 2 heads of size 2. Learned positions: Attention gets rope=None, so it shows attention alone."""
    return toy_config(
        qk_norm=qk_norm,
        vocab_size=64,
        block_size=3,
        n_layer=1,
        n_head=2,
        n_kv_head=n_kv_head,
        n_embd=4,
        attn="explicit",
        pos="learned",
        bias=False,
    )


def attention_example(seed: int = 0, n_kv_head: int = 2) -> dict[str, torch.Tensor]:
    """Every intermediate of llm.model.Attention on 3 tokens, 4 channels, 2 heads of size 2.

    Returns x, W_q/W_k/W_v/W_proj, Q/K/V, per head h: scores_h, masked_h, weights_h, out_h; concat, y.
    Checks that the step-by-step result equals explicit_attention and Attention.forward.
    """
    cfg = attention_config(n_kv_head)
    gen = torch.Generator().manual_seed(seed)
    attn = Attention(cfg).eval()
    with torch.no_grad():
        attn.qkv.weight.copy_(rounded(attn.qkv.weight.shape, gen))
        attn.proj.weight.copy_(rounded(attn.proj.weight.shape, gen))
    T = len(TOKENS)
    C = cfg.n_embd
    hs = cfg.head_size
    nh = cfg.n_head
    nkv = cfg.n_kv_head
    x = rounded((T, C), gen, scale=1.0)
    W_q, W_k, W_v = attn.qkv.weight.detach().split([C, nkv * hs, nkv * hs], dim=0)
    ex = {"x": x, "W_q": W_q, "W_k": W_k, "W_v": W_v, "W_proj": attn.proj.weight.detach()}
    ex["Q"] = x @ W_q.T  # (T, C)
    ex["K"] = x @ W_k.T  # (T, nkv * hs)
    ex["V"] = x @ W_v.T  # (T, nkv * hs)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    outs = []
    for h in range(nh):
        kv = h // (nh // nkv)  # grouped-query: query head h reads K/V head h // (n_head / n_kv_head)
        q = ex["Q"][:, h * hs : (h + 1) * hs]  # (T, hs)
        k = ex["K"][:, kv * hs : (kv + 1) * hs]
        v = ex["V"][:, kv * hs : (kv + 1) * hs]
        scores = q @ k.T / math.sqrt(hs)  # (T, T): row = query, column = key
        masked = scores.masked_fill(~causal, float("-inf"))
        weights = F.softmax(masked, dim=-1)
        ex[f"scores_{h}"] = scores
        ex[f"masked_{h}"] = masked
        ex[f"weights_{h}"] = weights
        ex[f"out_{h}"] = weights @ v
        outs.append(ex[f"out_{h}"])
    ex["concat"] = torch.cat(outs, dim=-1)
    ex["y"] = ex["concat"] @ ex["W_proj"].T
    with torch.no_grad():  # the same numbers from the project's code paths
        qh = ex["Q"].view(T, nh, hs).transpose(0, 1)[None]  # (1, nh, T, hs)
        kh = repeat_kv(ex["K"].view(T, nkv, hs).transpose(0, 1)[None], nh // nkv)
        vh = repeat_kv(ex["V"].view(T, nkv, hs).transpose(0, 1)[None], nh // nkv)
        heads = explicit_attention(qh, kh, vh, None)[0]  # (nh, T, hs)
        torch.testing.assert_close(heads.transpose(0, 1).reshape(T, C), ex["concat"])
        torch.testing.assert_close(attn(x[None], None)[0], ex["y"])
    return ex


def render_attention() -> str:
    ex = attention_example()
    channels = labels("c", 4)
    weight_rows = labels("q", 4) + labels("k", 4) + labels("v", 4)
    qkv_weight = torch.cat([ex["W_q"], ex["W_k"], ex["W_v"]])
    return text(
        "x: the input to Attention, one row per token (3 tokens x 4 channels)\n"
        + matrix(ex["x"], TOKEN_LABELS, channels, 1),
        "W_q, W_k, W_v: rows 0-3, 4-7, 8-11 of attn.qkv.weight (each 4 out x 4 in)\n"
        + matrix(qkv_weight, weight_rows, channels, 1),
        "Q = x W_qᵀ\n" + matrix(ex["Q"], TOKEN_LABELS, channels),
        "K = x W_kᵀ\n" + matrix(ex["K"], TOKEN_LABELS, channels),
        "V = x W_vᵀ\n" + matrix(ex["V"], TOKEN_LABELS, channels),
    )


def render_attention_head(h: int) -> str:
    ex = attention_example()
    tok = TOKEN_LABELS
    return text(
        f"head {h}: scores = Q_{h} K_{h}ᵀ / √2 (row: query, column: key)\n" + matrix(ex[f"scores_{h}"], tok, tok),
        "causal mask: a query may not look at later keys\n" + matrix(ex[f"masked_{h}"], tok, tok),
        "softmax over each row: the attention weights\n" + matrix(ex[f"weights_{h}"], tok, tok),
        f"out_{h} = weights V_{h}\n" + matrix(ex[f"out_{h}"], tok, labels("d", 2)),
    )


def render_attention_out() -> str:
    ex = attention_example()
    channels = labels("c", 4)
    return text(
        "concat = [out_0 | out_1]\n" + matrix(ex["concat"], TOKEN_LABELS, channels),
        "y = concat W_projᵀ: the output of Attention.forward, added to the residual stream\n"
        + matrix(ex["y"], TOKEN_LABELS, channels),
    )


def render_softmax() -> str:
    rows = []
    for scores in ([0.5, 0.3], [2.0, 1.0, 0.1], [0.0, 0.0, 0.0, 0.0], [10.0, 0.0]):
        p = F.softmax(torch.tensor(scores), dim=-1)
        rows.append([numbers(scores, 1), numbers(p, 2)])
    return table(["scores", "softmax"], rows)


def render_gqa() -> str:
    rows = []
    for name in PRESETS:
        c = model_preset(name)
        per_token = 2 * c.n_kv_head * c.head_size * c.n_layer  # K and V, every layer
        full = 2 * c.n_head * c.head_size * c.n_layer
        rows.append([f"`{name}`", c.n_head, c.n_kv_head, c.head_size, f"{per_token:,}", f"{full:,}"])
    header = ["preset", "n_head", "n_kv_head", "head size", "K/V values cached per token", "with n_kv_head = n_head"]
    mha = Attention(attention_config(2))
    gqa = Attention(attention_config(1))
    k = torch.arange(6.0).view(1, 1, 3, 2)  # (B, n_kv=1, T=3, hs=2)
    repeated = repeat_kv(k, 2)[0]  # (2, T, hs)
    heads = "\n".join(f"head {h}\n" + matrix(t, TOKEN_LABELS, labels("d", 2), 0) for h, t in enumerate(repeated))
    shapes = (
        f"attn.qkv in the worked example: {tuple(mha.qkv.weight.shape)} with 2 K/V heads, "
        f"{tuple(gqa.qkv.weight.shape)} with 1"
    )
    repeat = "repeat_kv(K, 2): one K/V head (B, 1, T, 2) serves both query heads (B, 2, T, 2)\n" + heads
    return table(header, rows) + "\n\n" + text(shapes, repeat)


def qk_norm_example(seed: int = 0) -> dict[str, torch.Tensor]:
    """The worked example's head 0 with qk_norm=True: q and k after Attention.project (RMSNorm per head, gains
    at their initial 1), the scores from them, and the largest score with the input scaled, with and without."""
    plain = attention_example(seed)
    attn = Attention(attention_config(qk_norm=True)).eval()
    hs = attn.head_size
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.cat([plain["W_q"], plain["W_k"], plain["W_v"]]))

        def head0(x: torch.Tensor, norm: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            if norm:
                q, k, _ = attn.project(x[None], None)  # (1, nh, T, hs): the model's own QK-norm
                q, k = q[0, 0], k[0, 0]
            else:
                q, k = (x @ plain["W_q"].T)[:, :hs], (x @ plain["W_k"].T)[:, :hs]
            return q, k, q @ k.T / math.sqrt(hs)

        ex = {}
        ex["q"], ex["k"], ex["scores"] = head0(plain["x"], True)
        causal = torch.ones(len(TOKENS), len(TOKENS), dtype=torch.bool).tril()
        ex["weights"] = F.softmax(ex["scores"].masked_fill(~causal, float("-inf")), dim=-1)
        for scale in (1, 10, 100):
            for norm in (False, True):
                scores = head0(plain["x"] * scale, norm)[2]
                ex[f"max_{scale}_{int(norm)}"] = scores.masked_fill(~causal, 0).abs().max()
        ex["bound"] = torch.tensor(math.sqrt(hs))
    return ex


def render_qk_norm() -> str:
    ex = qk_norm_example()
    tok, d = TOKEN_LABELS, labels("d", 2)
    rows = [[f"x × {s}", number(float(ex[f"max_{s}_0"]), 2), number(float(ex[f"max_{s}_1"]), 2)] for s in (1, 10, 100)]
    header = ["input", "largest unmasked score in absolute value, head 0, qk_norm=false", "with qk_norm=true"]
    presets = [(name, model_preset(name)) for name in PRESETS]
    sizes = [(name, c.head_size) for name, c in presets if c.qk_norm]
    bounds = ", ".join(f"`{name}` (head size {hs}) ±{number(math.sqrt(hs), 2)}" for name, hs in sizes)
    worked = text(
        "head 0, qk_norm=true: q and k of each token divided by their RMS over the head's 2 channels (gains 1)\n"
        + matrix(ex["q"], tok, d)
        + "\n\n"
        + matrix(ex["k"], tok, d),
        "scores = q kᵀ / √2, every one within ±√2 = "
        + number(float(ex["bound"]), 2)
        + "\n"
        + matrix(ex["scores"], tok, tok),
        "softmax over each row, after the causal mask\n" + matrix(ex["weights"], tok, tok),
    )
    return (
        worked
        + "\n\n"
        + table(header, rows)
        + f"\n\nThe bound √(head size) with gains 1, in the presets with `qk_norm: true`: {bounds}."
    )


def weighted_sum_by_hand(h: int = 0, query: int = 2) -> str:
    """The prose's Step 5 line: out_h[query] as weights times values, from the printed (rounded) numbers."""
    ex = attention_example()
    hs = attention_config().head_size
    weights = ex[f"weights_{h}"][query, : query + 1]
    values = ex["V"][: query + 1, h * hs : (h + 1) * hs]
    terms = " + ".join(f"{number(float(w), 2)} × [{numbers(v, 2)}]" for w, v in zip(weights, values, strict=True))
    return f"{terms} = [{numbers(ex[f'out_{h}'][query], 2)}]".replace("-", "−")


BLOCKS: dict[str, Callable[[], str]] = {
    "attention": render_attention,
    "attention-head0": lambda: render_attention_head(0),
    "attention-head1": lambda: render_attention_head(1),
    "attention-out": render_attention_out,
    "softmax": render_softmax,
    "gqa": render_gqa,
    "qk-norm": render_qk_norm,
}
