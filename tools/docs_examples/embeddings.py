"""docs/embeddings.md: embedding tables per preset, and rotary positions on a 4-channel head."""

from __future__ import annotations

from collections.abc import Callable

import torch

from llm.config import model_preset
from llm.model import apply_rope, rope_cache
from tools.docs_examples.printing import PRESETS, labels, matrix, number, numbers, on_meta, table, text


def render_rope() -> str:
    hs = 4
    cos, sin = rope_cache(16, hs)  # (16, hs/2)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    q = torch.tensor([1.0, 0.5, -0.5, 1.0])
    k = torch.tensor([0.5, 1.0, 1.0, 0.5])

    def at(v: torch.Tensor, pos: int) -> torch.Tensor:
        """v rotated to position pos, as Attention.forward rotates q and k."""
        return apply_rope(v.view(1, 1, 1, hs), cos[pos : pos + 1], sin[pos : pos + 1]).view(hs)

    positions = labels("pos ", 3)
    rotated = torch.stack([at(q, p) for p in range(3)])
    pairs = ((0, 0), (5, 5), (1, 0), (2, 1), (9, 8), (2, 0), (7, 5))
    rows = [[m, n, m - n, number(float(at(q, m) @ at(k, n)), 4)] for m, n in pairs]
    example = text(
        f"rope_cache(16, head_size=4), positions 0-2; frequencies 1 / 10000^(2i/4) = {numbers(inv_freq, 2)}",
        "cos (position x pair)\n" + matrix(cos[:3], positions, ["pair 0", "pair 1"], 4),
        "sin\n" + matrix(sin[:3], positions, ["pair 0", "pair 1"], 4),
        "q = [1.0, 0.5, -0.5, 1.0] rotated by apply_rope at positions 0, 1, 2\n"
        + matrix(rotated, positions, labels("d", 4), 4),
    )
    claim = "The score of q at position m with k = [0.5, 1.0, 1.0, 0.5] at position n depends only on m − n:"
    scores = table(["m (query)", "n (key)", "m − n", "rotated q · rotated k"], rows)
    return "\n\n".join([example, claim, scores])


def render_embeddings() -> str:
    rows = []
    for name in PRESETS:
        c = model_preset(name)
        m = on_meta(c)
        if m.wpe is not None:
            wpe = f"{m.wpe.weight.numel():,}"
        else:
            wpe = "none (rotary)"
        tied = str(m.lm_head.weight is m.wte.weight).lower()
        rows.append(
            [
                f"`{name}`",
                f"{c.vocab_size:,}",
                f"{c.padded_vocab_size:,}",
                c.n_embd,
                f"{m.wte.weight.numel():,}",
                wpe,
                tied,
                f"{m.num_params():,}",
            ]
        )
    header = ["preset", "vocab_size", "padded", "n_embd", "wte parameters", "wpe parameters", "lm_head tied"]
    return table([*header, "num_params()"], rows)


BLOCKS: dict[str, Callable[[], str]] = {
    "embeddings": render_embeddings,
    "rope": render_rope,
}
