"""Documents -> one flat token file per split on disk -> windows of block_size + 1 tokens.

The tokenizer and the token files of a corpus are one cache entry (token_cache), found again by the documents'
text keys and the settings, so an unchanged corpus is never tokenized twice.

Each document is followed by the end-of-document token, so the model learns where texts stop and a
window that crosses a boundary still reads sensibly. The split is by document: no text is on both sides.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, pre_tokenizers
from torch.utils.data import Dataset, Sampler

from llm.atomic import atomic_open, fsync_dir, write_text
from llm.data.document import Document
from llm.errors import ConfigError
from llm.tokenizer import IGNORE, eod_id, load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when the token files or the tokenizer recipe change (3: ChatML's markers reserved)


def split_documents(docs: Sequence[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Sort documents by a hash of (seed, path); the first round(n * val_fraction) are validation.

    A document's side depends on its path, not on file order, so adding documents moves at most a
    few near the boundary. Both sides get at least one document when there are two or more.
    """
    scored = sorted(docs, key=lambda d: _unit_hash(f"{seed}:{d.path}"))
    n_val = round(len(docs) * val_fraction)
    if len(docs) >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(docs) - 1)
    return scored[n_val:], scored[:n_val]


def _unit_hash(s: str) -> float:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") / 2**64


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _nbytes(doc: Document) -> int:
    return doc.text_file.stat().st_size if doc._text is None else len(doc.text.encode("utf-8"))


def tokenizer_sample(docs: Sequence[Document], max_bytes: int, seed: int) -> Iterator[str]:
    """The texts the BPE learns its merges from, streamed: every document when together they hold at most max_bytes
    of UTF-8, else a sample of about max_bytes.

    Merges are word-pair statistics: a few hundred megabytes of a corpus give the merges of the whole, as
    sentencepiece's input_sentence_size and GPT-2's tokenizer (trained on a slice of WebText) do. The sample is
    the documents ranked by a hash of (seed, path), taken in that order until the budget is spent (the last one
    cut), and given in corpus order: the same corpus and seed give the same tokenizer.
    """
    sizes = [_nbytes(d) for d in docs]
    if sum(sizes) <= max_bytes:
        yield from (d.text for d in docs)
        return
    budget, take = max_bytes, {}
    for i in sorted(range(len(docs)), key=lambda i: _unit_hash(f"tokenizer:{seed}:{docs[i].path}")):
        take[i] = min(sizes[i], budget)
        budget -= take[i]
        if budget <= 0:
            break
    for i in sorted(take):
        text = docs[i].text
        yield text if take[i] == sizes[i] else text.encode("utf-8")[: take[i]].decode("utf-8", "ignore")


def _safe_cut(text: str) -> int:
    """The last place a text can be cut without changing its tokens: after a newline between two characters that
    are not whitespace (the byte-level pre-tokenizer ends a piece there either way); 0 when there is none."""
    i = text.rfind("\n", 0, len(text) - 1)
    while i > 0 and (text[i - 1].isspace() or text[i + 1].isspace()):
        i = text.rfind("\n", 0, i)
    return i + 1 if i > 0 else 0


def _pieces(doc: Document, size: int) -> Iterator[str]:
    """A document's text in pieces of about `size` characters, read from its file a piece at a time, cut where
    the tokens stay those of the whole (_safe_cut); text with no such place in 4 x `size` is cut where it must be."""
    with open(doc.text_file, encoding="utf-8", newline="") if doc._text is None else io.StringIO(doc._text) as f:
        carry = ""
        while block := f.read(size):
            text = carry + block
            cut = _safe_cut(text)
            if not cut and len(text) < 4 * size:  # no safe place yet: read on
                carry = text
                continue
            cut = cut or len(text)
            yield text[:cut]
            carry = text[cut:]
        if carry:
            yield carry


def write_tokens(
    docs: Sequence[Document], tok: Tokenizer, path: Path, chunk_bytes: int = 1 << 22, piece_chars: int = 1 << 16
) -> int:
    """Encode docs (EOD after each) into path as a flat array, streamed: about chunk_bytes of text are held and
    encoded at a time, a long document in pieces of about piece_chars characters (the batch's unit of parallel
    work), so memory stays flat whatever the corpus. Returns the token count."""
    eod = eod_id(tok)
    dtype = token_dtype(tok.get_vocab_size())
    n = 0
    batch: list[str] = []
    ends: list[bool] = []  # whether batch[k] ends its document
    held = 0

    def flush(f) -> int:
        encodings = tok.encode_batch_fast(batch, add_special_tokens=False)  # no offsets: not needed
        ids = [e.ids + [eod] if end else e.ids for e, end in zip(encodings, ends, strict=True)]
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype)
        f.write(flat.tobytes())
        batch.clear()
        ends.clear()
        return len(flat)

    with atomic_open(path, "wb") as f:
        for doc in docs:
            pieces = _pieces(doc, piece_chars)
            piece = next(pieces, "")
            for following in itertools.chain(pieces, [None]):
                batch.append(piece)
                ends.append(following is None)
                held += len(piece)
                if held >= chunk_bytes:
                    n += flush(f)
                    held = 0
                piece = following
        if batch:
            n += flush(f)
    return n


ALIGNS = ("none", "document")  # data.align


def token_cache(
    docs: Sequence[Document],
    cache_dir: Path,
    vocab_size: int,
    val_fraction: float,
    seed: int,
    tokenizer_sample_mb: float,
    tokenizer_file: Path | None,
) -> Path:
    """The cache entry of this corpus's tokenizer and token files (tokenizer.json, train.bin, val.bin, meta.json):
    <cache_dir>/<digest of the settings and each document's text_key>, built when it is missing. A given
    tokenizer_file is used as it is (its content is part of the digest); else a BPE of vocab_size is trained on a
    sample of tokenizer_sample_mb of the training documents. Built in a folder of this process's own and renamed
    into place: two runs building one corpus at once never share a half-written entry."""
    settings = [FORMAT_VERSION, vocab_size, val_fraction, seed, tokenizer_sample_mb]
    if tokenizer_file is not None:  # a given tokenizer: its content, not a vocab size, fixes the ids
        settings.append(hashlib.sha256(tokenizer_file.read_bytes()).hexdigest())
    # text_key changes with the source, the ingester's version and its settings: new text, new tokens
    digest = hashlib.sha256(json.dumps([settings, sorted((d.path, d.text_key) for d in docs)]).encode())
    folder = cache_dir / digest.hexdigest()[:16]
    if (folder / "meta.json").exists():
        log.info("corpus unchanged: reusing tokenizer and tokens in %s", folder)
        return folder
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for old in folder.parent.glob(f"{folder.name}.*.tmp"):  # left by a run that was killed while building
        if not _alive(old.name.split(".")[1]):
            shutil.rmtree(old, ignore_errors=True)
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")  # two runs building at once never share it
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if tokenizer_file is not None:
        tok = load_tokenizer(tokenizer_file)
        if tok.get_vocab_size() > vocab_size:
            raise ConfigError(
                f"data.tokenizer={tokenizer_file} has {tok.get_vocab_size()} tokens, more than "
                f"data.vocab_size={vocab_size} (model.config.vocab_size)"
            )
    else:
        sample = tokenizer_sample(train_docs, int(tokenizer_sample_mb * 2**20), seed)
        tok = train_tokenizer(sample, vocab_size)
    write_text(tmp / "tokenizer.json", tok.to_str(pretty=True))
    meta = {
        "dtype": token_dtype(tok.get_vocab_size()).name,
        "vocab_size": tok.get_vocab_size(),
        "train_tokens": write_tokens(train_docs, tok, tmp / "train.bin"),
        "val_tokens": write_tokens(val_docs, tok, tmp / "val.bin") if val_docs else 0,
        "train_docs": [d.path for d in train_docs],
        "val_docs": [d.path for d in val_docs],
    }
    write_text(tmp / "meta.json", json.dumps(meta, indent=1))
    if (folder / "meta.json").exists():  # another run finished the same entry first: use that one
        shutil.rmtree(tmp, ignore_errors=True)
        return folder
    try:
        tmp.rename(folder)  # the cache entry appears whole or not at all
        fsync_dir(folder.parent)
    except OSError:
        if not (folder / "meta.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # lost the race to an identical entry
    counts = f"{meta['train_tokens']} train / {meta['val_tokens']} val tokens, vocab {meta['vocab_size']}"
    log.info("tokenized %d docs: %s -> %s", len(docs), counts, folder)
    return folder


def _alive(pid: str) -> bool:
    """Whether process pid still runs: the build folder it owns is not stale."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:  # it runs, as another user
        return True
    except (ValueError, ProcessLookupError):
        return False
    return True


def check_align(align: str) -> str:
    if align not in ALIGNS:
        raise ConfigError(f"data.align={align} must be one of: {', '.join(ALIGNS)}")
    return align


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """(vocab,) int64: how many bytes of UTF-8 text each token id stands for; special tokens (EOD) stand for none.

    A byte-level BPE token is a fixed byte string, spelt in its vocabulary entry with one character of
    ByteLevel's 256-character alphabet per byte, so its byte count is its string's length. Summed over
    the ids of an encoded text, it gives len(text.encode("utf-8")).
    """
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    added = tok.get_added_tokens_decoder()
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for text, i in tok.get_vocab().items():
        if i in added:
            lengths[i] = 0 if added[i].special else len(text.encode("utf-8"))  # added tokens are raw text
        elif set(text) <= alphabet:
            lengths[i] = len(text)
        else:
            raise ValueError(f"token {i} ({text!r}) is not spelt in ByteLevel's alphabet: not a byte-level BPE")
    return lengths


def document_starts(tokens: np.ndarray, eod: int, chunk: int = 1 << 26) -> np.ndarray:
    """(docs,) int64: position 0 and every position right after an end-of-document token (bar the file's end)."""
    ends = [np.flatnonzero(tokens[i : i + chunk] == eod) + i for i in range(0, len(tokens), chunk)]
    after = np.concatenate([np.zeros(0, dtype=np.int64), *ends]) + 1
    return np.concatenate([[0], after[after < len(tokens)]]).astype(np.int64)


def document_cuts(starts: np.ndarray, n_tokens: int, block_size: int) -> np.ndarray:
    """(windows + 1,) int64 boundaries 0 = c_0 < c_1 < ... < c_m = n_tokens of document-aligned windows.

    Window k reads tokens c_k .. c_{k+1} and predicts c_k + 1 .. c_{k+1}. From each boundary the next is
    the furthest document start (or the end of the file) at most block_size tokens on: the documents in
    between are packed into one window. Where there is none, a document longer than a window starts or
    continues there, and is cut after block_size tokens.
    """
    ends = np.append(starts[1:], n_tokens)  # where a window may end: before a document start, or at the end
    cuts = [0]
    while cuts[-1] < n_tokens:
        c = cuts[-1]
        j = int(np.searchsorted(ends, c + block_size, side="right")) - 1  # the furthest end within reach
        cuts.append(int(ends[j]) if j >= 0 and ends[j] > c else c + block_size)
    return np.asarray(cuts, dtype=np.int64)


class TokenWindows(Dataset):
    """One epoch's windows over a token file: (input, target) of up to block_size tokens, shifted by one.

    The file is read as a circle: its last token, an end-of-document, is followed by its first. An
    epoch's windows cut the circle into consecutive pieces that share their boundary token, window k
    reading tokens c_k .. c_{k+1} and predicting c_k + 1 .. c_{k+1} (mod n), so every token, the first
    included, is a target exactly once per epoch:

    - align="none": c_k = phase + k * block_size for k < ceil(n / block_size), and the circle closes at
      phase + n: the last window predicts the n mod block_size tokens left over (when there are any).
      With a seed, the phase is drawn from (seed, epoch) in [0, block_size), so each epoch cuts the
      stream elsewhere; seed=None: phase 0, windows consecutive from the file's first token.
    - align="document": the boundaries are `document_cuts`: every window starts at a document start,
      short documents packed behind each other, or continues a document longer than a window where
      the previous window cut it. They are the same every epoch (only the order changes, EpochSampler).

    Items are keyed by (epoch, k); there are len(self) windows in every epoch. A plain k is window k of
    epoch 0 (what an ordinary sampler gives, such as the one Lightning's overfit_batches puts in). An item
    is a dict: "input" and "target" (block_size,) ids; a window that predicts fewer than block_size tokens
    is padded, inputs with the end-of-document id, targets with IGNORE. With document_mask, "pos": each
    input token's position in its document (document_positions), so that attention stays inside each
    document of the window (model.document_mask). With token_bytes (token_byte_lengths), "bytes": the
    number of UTF-8 bytes of the text its targets stand for.
    """

    def __init__(
        self,
        path: Path,
        dtype: str,
        block_size: int,
        eod: int,
        seed: int | None,
        align: str,
        token_bytes: np.ndarray | None = None,
        document_mask: bool = False,
    ) -> None:
        check_align(align)
        self.path, self.dtype, self.block_size, self.eod = Path(path), np.dtype(dtype), block_size, eod
        self.seed, self.align, self.token_bytes, self.document_mask = seed, align, token_bytes, document_mask
        self.n_tokens = self.path.stat().st_size // self.dtype.itemsize
        if self.n_tokens < 1:
            raise ValueError(f"{self.path} holds no tokens: nothing to make a window of")
        self.cuts: np.ndarray | None = None
        if align == "document":
            self.cuts = document_cuts(document_starts(self._open(), eod), self.n_tokens, block_size)
        self._tokens: np.ndarray | None = None  # opened lazily: a memmap per worker process
        self._phase = (-1, 0)  # (epoch, its phase)

    def _open(self) -> np.ndarray:
        return np.memmap(self.path, dtype=self.dtype, mode="r")

    def __len__(self) -> int:
        if self.cuts is not None:
            return len(self.cuts) - 1
        return -(-self.n_tokens // self.block_size)

    def windows(self, epoch: int) -> int:
        """Windows in epoch: the same in every epoch."""
        return len(self)

    def phase(self, epoch: int) -> int:
        """Where epoch's first window starts (align="none"): drawn from (seed, epoch), 0 without a seed."""
        if self.seed is None:
            return 0
        if self._phase[0] != epoch:  # one draw per epoch, not per window
            self._phase = (epoch, int(np.random.default_rng((self.seed, epoch)).integers(self.block_size)))
        return self._phase[1]

    def span(self, epoch: int, k: int) -> tuple[int, int]:
        """(first token, number of targets) of window k in epoch: it reads tokens first .. first + targets (mod n)."""
        if self.cuts is not None:
            return int(self.cuts[k]), int(self.cuts[k + 1] - self.cuts[k])
        start = k * self.block_size
        return (self.phase(epoch) + start) % self.n_tokens, min(self.block_size, self.n_tokens - start)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        if self._tokens is None:
            self._tokens = self._open()
        epoch, k = key if isinstance(key, tuple) else (0, key)
        first, n = self.span(epoch, k)
        window = self._tokens[first : first + n + 1]
        while len(window) < n + 1:  # past the file's end: on from its first token
            window = np.concatenate([window, self._tokens[: n + 1 - len(window)]])
        window = window.astype(np.int64)
        if n == self.block_size:
            x, y = torch.from_numpy(window[:-1]), torch.from_numpy(window[1:])
        else:  # padded to block_size: inputs with the end-of-document id, targets with IGNORE
            x = torch.full((self.block_size,), self.eod, dtype=torch.int64)
            y = torch.full((self.block_size,), IGNORE, dtype=torch.int64)
            x[:n], y[:n] = torch.from_numpy(window[:-1]), torch.from_numpy(window[1:])
        item = {"input": x, "target": y}
        if self.document_mask:
            item["pos"] = document_positions(x, self.eod)
        if self.token_bytes is not None:
            item["bytes"] = torch.tensor(int(self.token_bytes[window[1:]].sum()))
        return item


def document_positions(x: torch.Tensor, eod: int) -> torch.Tensor:
    """(..., T) input ids -> the position of each token within its document: 0 at the window's first token and right
    after each end-of-document token, counting up from there (the model's document_mask reads the documents from
    these)."""
    T = x.size(-1)
    index = torch.arange(T, device=x.device).expand_as(x)
    starts = torch.zeros_like(x, dtype=torch.bool)
    starts[..., 0] = True
    starts[..., 1:] = x[..., :-1] == eod
    return index - torch.where(starts, index, 0).cummax(-1).values


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled window keys (epoch, k) that a resumed run picks up exactly where the killed one stopped.

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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, done = self.position()
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        mine = torch.randperm(self.n, generator=g)[self.rank :: self.world_size]
        for k in mine[done * self.batch_size :].tolist():
            yield epoch, k
