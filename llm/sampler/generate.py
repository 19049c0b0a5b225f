"""Text generation from a trained GPT."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from llm.model import GPT
from llm.tokenizer import eod_id


@torch.inference_mode()
def generate(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 100) -> str:
    """Greedy continuation of prompt: the most likely token each step, until EOD or max_new_tokens."""
    if not prompt:
        raise ValueError("prompt is empty: give some text to continue, e.g. prompt='def '")
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(prompt).ids], device=device)
    eod, vocab = eod_id(tokenizer), tokenizer.get_vocab_size()
    new: list[int] = []
    for _ in range(max_new_tokens):
        context = ids[:, -model.config.block_size :]
        logits = model(context)[0, -1, :vocab]  # padding rows of the embedding are never a choice
        next_id = int(logits.argmax())
        if next_id == eod:
            break
        new.append(next_id)
        ids = torch.cat([ids, torch.tensor([[next_id]], device=device)], dim=1)
    return tokenizer.decode(new)
