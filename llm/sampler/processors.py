"""Sampling controls, each a function of the logits and one value per row, and the draw itself.

Every row of a batch has its own settings (a server's requests each bring theirs), held as columns (B, 1) on the
device. Each control maps float32 logits (B, V) to new logits and leaves a row whose value switches it off (top_k 0,
top_p 1, min_p 0, repetition_penalty 1) as it was. `counts` (B, V) holds how often each token already appears in a
row (prompt and output), for the repetition penalty. Everything stays on the device, and no control reads a value
back to the host.

The draw is the exponential race: argmax(p / E) with E ~ Exp(1) drawn per row from the row's own generator is a
draw from p. So a seeded row gives the same tokens whichever rows share its batch, and the draw needs no host sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llm.sampler.params import SamplingParams


def repetition_penalty(logits: torch.Tensor, counts: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Make tokens already seen less likely: positive logits divided by penalty (B, 1), negative ones multiplied."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(counts > 0, penalised, logits)


def temperature(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Divide logits by t (B, 1): t < 1 sharpens the distribution, t > 1 flattens it."""
    return logits / t


def top_k(logits: torch.Tensor, k: torch.Tensor, k_max: int) -> torch.Tensor:
    """Keep each row's k (B, 1) most likely tokens (k 0: all). k_max: the largest k of the batch, at most V."""
    values = torch.topk(logits, k_max, dim=-1).values  # (B, k_max) in descending order
    kth = values.gather(-1, (k.clamp(1, k_max) - 1))  # (B, 1) each row's k-th largest logit
    kth = torch.where(k > 0, kth, torch.full_like(kth, float("-inf")))
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probabilities sum to at least p (B, 1)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = (mass_before >= p) & (p < 1)  # the most likely token always stays (mass_before = 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p(logits: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Drop tokens less likely than m (B, 1) times the most likely one."""
    probs = torch.softmax(logits, dim=-1)
    threshold = m * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


@dataclass(frozen=True)
class Controls:
    """Which controls a step runs: those some row of it uses (decided on the host, so no step pays for the rest)."""

    penalty: bool = False
    sample: bool = False  # some row is not greedy
    top_k: int = 0  # the largest top_k of the sampled rows; 0: none uses top_k
    top_p: bool = False
    min_p: bool = False


def choose(
    logits: torch.Tensor,
    knobs: dict[str, torch.Tensor],
    counts: torch.Tensor | None,
    race: torch.Tensor | None,
    controls: Controls,
) -> torch.Tensor:
    """logits (B, V) of the real vocabulary -> next token ids (B,).

    knobs: the rows' settings, each (B, 1) (RowSettings.knobs); race (B, V): each row's Exp(1) draws. The
    repetition penalty applies before the argmax of a greedy row too; temperature and truncation only to sampled
    rows (a greedy row's argmax ignores them)."""
    logits = logits.float()
    if controls.penalty and counts is not None:
        logits = repetition_penalty(logits, counts, knobs["repetition_penalty"])
    greedy = logits.argmax(dim=-1)
    if not controls.sample or race is None:
        return greedy
    logits = temperature(logits, knobs["temperature"])
    if controls.top_k:
        logits = top_k(logits, knobs["top_k"], controls.top_k)
    if controls.top_p:
        logits = top_p(logits, knobs["top_p"])
    if controls.min_p:
        logits = min_p(logits, knobs["min_p"])
    drawn = torch.argmax(torch.softmax(logits, dim=-1) / race, dim=-1)
    return torch.where(knobs["greedy"][:, 0], greedy, drawn)


class RowSettings:
    """The sampling settings of `rows` rows: columns (B, 1) on the device, the SamplingParams on the host."""

    def __init__(self, rows: int, device: torch.device) -> None:
        self.params: list[SamplingParams | None] = [None] * rows
        self.knobs = {
            "temperature": torch.ones(rows, 1, device=device),
            "top_k": torch.zeros(rows, 1, dtype=torch.long, device=device),
            "top_p": torch.ones(rows, 1, device=device),
            "min_p": torch.zeros(rows, 1, device=device),
            "repetition_penalty": torch.ones(rows, 1, device=device),
            "greedy": torch.ones(rows, 1, dtype=torch.bool, device=device),
        }

    def set(self, rows: Sequence[int], params: Sequence[SamplingParams]) -> None:
        """Give rows their settings (one host-to-device copy per setting)."""
        for row, p in zip(rows, params, strict=True):
            self.params[row] = p
        index = torch.tensor(list(rows), device=self.knobs["greedy"].device)
        values = {
            # a greedy row keeps temperature 1: its draw is computed and thrown away, and must not divide by 0
            "temperature": [p.temperature if not p.greedy else 1.0 for p in params],
            "top_k": [p.top_k for p in params],
            "top_p": [p.top_p for p in params],
            "min_p": [p.min_p for p in params],
            "repetition_penalty": [p.penalty for p in params],
            "greedy": [p.greedy for p in params],
        }
        for name, column in values.items():
            knob = self.knobs[name]
            knob[index] = torch.tensor(column, dtype=knob.dtype).to(knob.device)[:, None]

    def select(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The knobs of some rows (b, 1) each, in index's order."""
        return {name: knob[index] for name, knob in self.knobs.items()}

    def controls(self, rows: Sequence[int], vocab_size: int) -> Controls:
        """The controls rows use: the others cost nothing."""
        params = [self.params[r] for r in rows if self.params[r] is not None]
        sampled = [p for p in params if not p.greedy]
        return Controls(
            penalty=any(p.penalty != 1.0 for p in params),
            sample=bool(sampled),
            top_k=min(max((p.top_k for p in sampled), default=0), vocab_size),
            top_p=any(p.top_p < 1.0 for p in sampled),
            min_p=any(p.min_p > 0.0 for p in sampled),
        )
