"""docs/layers.md: RMSNorm against LayerNorm, the activations, and one SwiGLU MLP worked through."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from llm.config import model_preset
from llm.model import MLP, GPTConfig, RMSNorm, make_norm
from tools.docs_examples.printing import PRESETS, labels, matrix, number, numbers, rounded, table, text, toy_config


def render_norm() -> str:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [1.0, -1.0, 1.0, -1.0]])
    rms = RMSNorm(4)
    ln = make_norm(toy_config(n_embd=4, n_head=1, n_kv_head=1, norm="layernorm"))
    with torch.no_grad():
        r = rms(x)
        l = ln(x)
    rows = []
    for i in range(3):
        rms_of_x = number(float(x[i].pow(2).mean().sqrt()), 4)
        rows.append([numbers(x[i], 0), rms_of_x, numbers(r[i], 4), numbers(l[i], 4)])
    return table(["x", "rms(x)", "RMSNorm(x)", "LayerNorm(x)"], rows)


def mlp_example(seed: int = 0) -> dict[str, torch.Tensor]:
    """llm.model.MLP (SwiGLU) with n_embd=4, mlp_hidden=2 on one token, every intermediate."""
    cfg = toy_config(n_embd=4, n_head=1, n_kv_head=1, mlp="swiglu", mlp_hidden=2)
    mlp = MLP(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mlp.fc.weight.copy_(rounded(mlp.fc.weight.shape, gen))
        mlp.proj.weight.copy_(rounded(mlp.proj.weight.shape, gen))
        x = rounded((4,), gen, scale=1.0)
        gate, value = mlp.fc(x).chunk(2)  # (2,) each
        hidden = F.silu(gate) * value
        ex = {
            "x": x,
            "W_fc": mlp.fc.weight.clone(),
            "W_proj": mlp.proj.weight.clone(),
            "gate": gate,
            "value": value,
            "silu_gate": F.silu(gate),
            "hidden": hidden,
            "y": mlp.proj(hidden),
        }
        torch.testing.assert_close(mlp(x), ex["y"])
    return ex


def render_activations() -> str:
    xs = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    values = torch.stack([F.relu(xs), F.gelu(xs, approximate="tanh"), F.silu(xs)])
    return text(matrix(values, ["relu", "gelu (tanh)", "silu"], [number(float(v), 1) for v in xs], 3))


def render_mlp() -> str:
    ex = mlp_example()
    channels = labels("c", 4)
    steps = torch.stack([ex["gate"], ex["value"], ex["silu_gate"], ex["hidden"]])
    worked = text(
        "x (one token, 4 channels)\n" + matrix(ex["x"], ["x"], channels, 1),
        "mlp.fc.weight: 2 gate rows, then 2 value rows\n"
        + matrix(ex["W_fc"], ["gate0", "gate1", "value0", "value1"], channels, 1),
        "gate, value = fc(x).chunk(2); hidden = silu(gate) * value\n"
        + matrix(steps, ["gate", "value", "silu(gate)", "hidden"], labels("h", 2)),
        "y = proj(hidden)\n" + matrix(ex["y"], ["y"], channels),
    )
    rows = []
    for name in PRESETS:
        c = model_preset(name)
        for kind in ("gelu", "swiglu", "relu2"):
            cc = GPTConfig(**{**c.to_dict(), "mlp": kind, "mlp_hidden": None})
            n = sum(p.numel() for p in MLP(cc).to("meta").parameters() if p.dim() == 2)
            mark = " (preset)" if kind == c.mlp else ""
            rows.append([f"`{name}`", kind + mark, c.n_embd, cc.mlp_hidden, f"{n:,}"])
    sizes = table(["preset", "mlp", "n_embd", "mlp_hidden", "weights per MLP"], rows)
    return worked + "\n\n" + sizes


BLOCKS: dict[str, Callable[[], str]] = {
    "norm": render_norm,
    "activations": render_activations,
    "mlp": render_mlp,
}
