"""Sampling controls as composable logits processors, and the draw itself.

Each processor maps float32 logits (B, V) to new logits; `counts` (B, V) holds how often each token
already appears in a row (prompt and output), for the repetition penalty. Everything stays on the
device with static shapes, so a compiled decode step can include it.
"""

from __future__ import annotations

import torch

from llm.sampler.params import SamplingParams


class RepetitionPenalty:
    """Make tokens already seen less likely: positive logits divided by penalty, negative ones multiplied."""

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def __call__(self, logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        penalised = torch.where(logits > 0, logits / self.penalty, logits * self.penalty)
        return torch.where(counts > 0, penalised, logits)


class Temperature:
    """Divide logits by t: t < 1 sharpens the distribution, t > 1 flattens it."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


class TopK:
    """Keep the k most likely tokens."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        kth = torch.topk(logits, min(self.k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, float("-inf"))


class TopP:
    """Nucleus: keep the smallest set of most likely tokens whose probabilities sum to at least p."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above
        drop_sorted = mass_before >= self.p  # the most likely token always stays (mass_before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))


class MinP:
    """Drop tokens less likely than min_p times the most likely one."""

    def __init__(self, min_p: float) -> None:
        self.min_p = min_p

    def __call__(self, logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        threshold = self.min_p * probs.max(dim=-1, keepdim=True).values
        return logits.masked_fill(probs < threshold, float("-inf"))


Processor = RepetitionPenalty | Temperature | TopK | TopP | MinP


def build_processors(params: SamplingParams) -> tuple[Processor, ...]:
    """The processors params switch on, in the order they apply."""
    chain: list[Processor] = []
    if params.repetition_penalty != 1.0:
        chain.append(RepetitionPenalty(params.repetition_penalty))
    if params.greedy:
        return tuple(chain)  # the argmax ignores temperature and truncation
    if params.temperature != 1.0:
        chain.append(Temperature(params.temperature))
    if params.top_k > 0:
        chain.append(TopK(params.top_k))
    if params.top_p < 1.0:
        chain.append(TopP(params.top_p))
    if params.min_p > 0.0:
        chain.append(MinP(params.min_p))
    return tuple(chain)


class Sampler:
    """logits (B, V_padded) -> next token ids (B,): processors, then argmax or a random draw."""

    def __init__(self, params: SamplingParams, vocab_size: int) -> None:
        self.params = params
        self.vocab_size = vocab_size
        self.processors = build_processors(params)
        self.needs_counts = params.repetition_penalty != 1.0

    def process(self, logits: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """Processed float32 logits (B, V) of the real vocabulary (embedding padding is never a choice)."""
        logits = logits[..., : self.vocab_size].float()
        for process in self.processors:
            logits = process(logits, counts)
        return logits

    def __call__(self, logits: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.process(logits, counts)
        if self.params.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits, dim=-1)
        # argmax(p / E) with E ~ Exp(1) is a draw from p (the exponential race), with no host sync
        race = torch.empty_like(probs).exponential_(1)
        return torch.argmax(probs / race, dim=-1)
