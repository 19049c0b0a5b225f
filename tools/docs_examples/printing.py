"""Numbers, matrices and tables as the docs print them, and the small helpers the examples share."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from llm.config import model_preset
from llm.model import GPT, GPTConfig

PRESETS = ("tiny", "small", "gpt2-124m")
# The worked examples show the plain transformer: no QK-norm or soft-cap, tied embeddings, scaled init.
PLAIN = dict(qk_norm=False, zero_init_proj=False, logit_softcap=None, tie_embeddings=True, value_embeds=0)


def toy_config(**overrides) -> GPTConfig:
    """A toy model for a worked example: the tiny preset, plain, with the example's sizes."""
    return model_preset("tiny", **{**PLAIN, **overrides})


def number(v: float, digits: int) -> str:
    """v with `digits` decimals; never "-0.00"."""
    if math.isinf(v):
        return "-inf" if v < 0 else "inf"
    s = f"{v:.{digits}f}"
    if s.startswith("-") and float(s) == 0:
        return s[1:]
    return s


def numbers(values: Sequence[float] | torch.Tensor, digits: int) -> str:
    """Comma-separated, e.g. "0.55, 0.45"."""
    return ", ".join(number(float(v), digits) for v in values)


def matrix(
    t: torch.Tensor,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    digits: int = 2,
) -> str:
    """A 1-D or 2-D tensor as an aligned text table with row and column labels."""
    t = t.detach().float()
    if t.dim() == 1:
        t = t[None]
    rows = list(rows) if rows is not None else [str(i) for i in range(t.shape[0])]
    cols = list(cols) if cols is not None else [str(j) for j in range(t.shape[1])]
    cells = [[number(float(v), digits) for v in row] for row in t]
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
    """A fenced text block; parts are separated by a blank line."""
    return "```text\n" + "\n\n".join(parts) + "\n```"


def labels(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def rounded(shape: tuple[int, ...] | torch.Size, gen: torch.Generator, scale: float = 0.5) -> torch.Tensor:
    """Random numbers rounded to one decimal: products stay checkable with a pencil."""
    return (torch.randn(shape, generator=gen) * scale * 10).round() / 10


def on_meta(config: GPTConfig) -> GPT:
    """The model built on the meta device: shapes and parameter counts without memory or time."""
    with torch.device("meta"):
        return GPT(config)
