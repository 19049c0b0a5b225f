"""The training objective: next-token cross-entropy, and multi-token prediction on top of it.

Multi-token prediction (modded-nanogpt's form, no extra parameters): the logits at position t are also scored
against the tokens after the next one, t+2, t+3, ..., each with its own weight, and the step's loss is the
weighted average. The extra weights fall to zero as training goes on, the farthest token's first, so the run ends
on plain next-token prediction: with `optim.mtp_weights: [0.5, 0.25]` and `optim.mtp_decay_frac: 0.67` the weights
go [1, 0.5, 0.25 -> 0] over the first third of the steps, [1, 0.5 -> 0] over the second, then [1]."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from llm.tokenizer import IGNORE

CrossEntropy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the tokens of (B, T, V) logits, in float32 whatever their dtype.

    Targets equal to IGNORE (the padding of a short window) are left out.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def mtp_weights_at(extra: Sequence[float], step: int, total_steps: int, decay_frac: float) -> list[float]:
    """[1, w2, w3, ...] at optimizer step `step` of `total_steps`: the weights of the next token and of each token
    after it. The first `decay_frac` of the run is cut into len(extra) equal phases; in phase j the farthest
    token still weighted falls linearly to 0, the nearer ones keep their weights."""
    n = len(extra)
    if n == 0:
        return [1.0]
    phase = decay_frac * max(1, total_steps) / n  # steps per phase
    weights = [1.0]
    for k, w in enumerate(extra, start=1):  # token t+1+k; the farthest (k = n) decays in the first phase
        start = (n - k) * phase
        weights.append(w * min(1.0, max(0.0, 1 - (step - start) / phase)))
    return weights


def multi_token_losses(
    logits: torch.Tensor, targets: torch.Tensor, weights: Sequence[float], ce: CrossEntropy = token_cross_entropy
) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token loss, the objective): the objective is sum_k w_k CE_k / sum_k w_k, CE_k scoring the logits at t
    against the target k places further on (the token t+1+k). Weights of 0 cost nothing: with [1] the objective
    is the next-token loss itself, from `ce`. With further tokens weighted, the log-softmax over the vocabulary is
    computed once and each CE_k reads its targets' entries from it, so every extra token costs a gather, not
    another softmax over (B, T, V)."""
    T = logits.size(1)
    extra = [(k, w) for k, w in enumerate(weights[1:], start=1) if w > 0 and k < T]
    if not extra:
        next_token = ce(logits, targets)
        return next_token, next_token
    logp = F.log_softmax(logits.float(), dim=-1)

    def nll(k: int) -> torch.Tensor:  # CE_k
        return F.nll_loss(logp[:, : T - k].flatten(0, 1), targets[:, k:].flatten(), ignore_index=IGNORE)

    next_token = nll(0)
    total, norm = weights[0] * next_token, weights[0]
    for k, w in extra:
        total, norm = total + w * nll(k), norm + w
    return next_token, total / norm
