"""The key/value cache: each layer's K and V for every position decoded so far.

Buffers are preallocated at their full size, (B, n_kv, S_max, hs), and written in place at
`input_pos`, so every decode step has the same shapes and a compiled step never respecialises.
The sampler attaches caches for one call of `generate` and removes them afterwards: training never
allocates one.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from llm.model import GPT


class KVCache(nn.Module):
    """K and V of one attention layer, (batch, n_kv_head, max_len, head_size) each."""

    def __init__(
        self, batch: int, n_kv_head: int, max_len: int, head_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        shape = (batch, n_kv_head, max_len, head_size)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv, T, hs) at input_pos, (T,) shared or (B, T) per row; return the whole cache."""
        if input_pos.dim() == 1:  # every row at the same positions (prefill)
            self.k_cache.index_copy_(2, input_pos, k)
            self.v_cache.index_copy_(2, input_pos, v)
        else:  # each row at its own positions (decode of prompts of different lengths)
            index = input_pos[:, None, :, None].expand_as(k)  # (B, n_kv, T, hs): row b's slots
            self.k_cache.scatter_(2, index, k)
            self.v_cache.scatter_(2, index, v)
        return self.k_cache, self.v_cache


def setup_caches(
    model: GPT,
    batch: int,
    max_len: int,
    dtype: torch.dtype | None = None,
    reuse: bool = False,
    attn: str | None = None,
) -> torch.Tensor:
    """Attach a KVCache to every attention layer; return the causal mask (max_len, max_len), True = may attend.

    attn: "explicit" or "sdpa" for attention while the caches are attached; None keeps the model's.

    reuse=True takes the buffers of the previous reuse=True call when the shapes match: a compiled step
    replayed as a CUDA graph then finds its buffers at the same addresses, with no re-recording. Stale
    entries are harmless: every position a query may attend is written before it is read.
    """
    c = model.config
    if max_len > c.block_size:
        raise ValueError(f"cache of {max_len} positions is longer than block_size={c.block_size}")
    weight = model.lm_head.weight
    dtype = dtype or weight.dtype
    key = (id(model), c.n_layer, c.n_kv_head, c.head_size, batch, max_len, dtype, weight.device)
    kept = _kept.get(key)
    if reuse and kept is not None and kept[0]() is model:  # the same live model: an id can be reused
        _, caches, mask = kept
    else:
        caches = [KVCache(batch, c.n_kv_head, max_len, c.head_size, dtype, weight.device) for _ in model.blocks]
        mask = torch.ones(max_len, max_len, dtype=torch.bool, device=weight.device).tril()
    _kept.clear()  # at most one set is kept, that of the latest reuse=True call
    if reuse:  # freed with the model
        _kept[key] = (weakref.ref(model, lambda _: release_kept_caches()), caches, mask)
    for block, cache in zip(model.blocks, caches, strict=True):
        block.attn.kv_cache = cache
        block.attn.impl = attn or block.attn.config.attn
    return mask


_kept: dict[tuple, tuple[weakref.ref, list[KVCache], torch.Tensor]] = {}


def remove_caches(model: GPT) -> None:
    for block in model.blocks:
        block.attn.kv_cache = None
        block.attn.impl = block.attn.config.attn


def release_kept_caches() -> None:
    """Free the buffers that reuse=True keeps between calls."""
    _kept.clear()


@contextmanager
def kv_caches(
    model: GPT,
    batch: int,
    max_len: int,
    dtype: torch.dtype | None = None,
    reuse: bool = False,
    attn: str | None = None,
) -> Iterator[torch.Tensor]:
    """`with kv_caches(model, B, S) as causal_mask:` caches attached inside, detached after (even on error)."""
    try:
        yield setup_caches(model, batch, max_len, dtype, reuse, attn)
    finally:
        remove_caches(model)
