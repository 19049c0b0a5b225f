"""Documents -> one flat token file per split on disk -> windows of block_size + 1 tokens.

Each document is followed by the end-of-document token, so the model learns where texts stop and a
window that crosses a boundary still reads sensibly. The split is by document: no text is on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset, Sampler

from llm.data.pipeline import Document
from llm.tokenizer import eod_id


def split_documents(docs: Sequence[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Sort documents by a hash of (seed, path); the first round(n * val_fraction) are validation.

    A document's side depends on its path, not on file order, so adding documents moves at most a
    few near the boundary. Both sides get at least one document when there are two or more.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 1)")
    scored = sorted(docs, key=lambda d: _unit_hash(f"{seed}:{d.path}"))
    n_val = round(len(docs) * val_fraction)
    if len(docs) >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(docs) - 1)
    return scored[n_val:], scored[:n_val]


def _unit_hash(s: str) -> float:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") / 2**64


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_tokens(docs: Sequence[Document], tok: Tokenizer, path: Path, chunk: int = 512) -> int:
    """Encode docs (EOD after each) into path as a flat array; returns the token count."""
    eod = eod_id(tok)
    dtype = token_dtype(tok.get_vocab_size())
    n = 0
    with path.open("wb") as f:
        for i in range(0, len(docs), chunk):
            for enc in tok.encode_batch([d.text for d in docs[i : i + chunk]], add_special_tokens=False):
                ids = np.asarray(enc.ids + [eod], dtype=dtype)
                f.write(ids.tobytes())
                n += len(ids)
    return n


class TokenWindows(Dataset):
    """Windows of block_size + 1 tokens from a token file, returned as (input, target) shifted by one.

    random=True: window i starts at an offset drawn from a generator seeded by (seed, i), so item i
    is the same window on every rank, worker and resumed run. random=False: consecutive windows.
    """

    def __init__(
        self,
        path: Path,
        dtype: str,
        block_size: int,
        num_samples: int | None = None,
        random: bool = True,
        seed: int = 0,
    ):
        self.path, self.dtype, self.random, self.seed = Path(path), np.dtype(dtype), random, seed
        n_tokens = self.path.stat().st_size // self.dtype.itemsize
        self.block_size = min(block_size, n_tokens - 1)  # a tiny validation split gives one short window
        if self.block_size < 1:
            raise ValueError(f"{self.path.name} holds {n_tokens} tokens: too few to make a training window")
        self.n_starts = n_tokens - self.block_size  # starts 0 .. n_tokens - block_size - 1
        default = self.n_starts // self.block_size if random else max(1, (n_tokens - 1) // self.block_size)
        self.num_samples = default if num_samples is None else (num_samples if random else min(num_samples, default))
        self.num_samples = max(1, self.num_samples)
        self._tokens: np.ndarray | None = None  # opened lazily: a memmap per worker process

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        if self.random:
            start = int(np.random.default_rng((self.seed, i)).integers(self.n_starts))
        else:
            start = i * self.block_size
        window = torch.from_numpy(self._tokens[start : start + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]


class EpochSampler(Sampler[int]):
    """Shuffled window indices that a resumed run picks up exactly where the killed one stopped.

    Epoch e visits a permutation of range(n) drawn from (seed, e); rank r of w takes every w-th index
    (so DDP needs no DistributedSampler). `position()` returns (epoch, batches already done in it):
    the DataModule reads it from the trainer's restored loop state, so a resumed run skips what the
    checkpoint already trained on and sees the same batches as a run that was never interrupted.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        position: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.position = position or (lambda: (0, 0))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        epoch, done = self.position()
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        mine = torch.randperm(self.n, generator=g)[self.rank :: self.world_size]
        yield from mine[done * self.batch_size :].tolist()
