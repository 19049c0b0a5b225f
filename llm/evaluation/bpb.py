"""Bits per byte on held-out documents, overall and by kind: what fine-tuning did to code, prose, PDF text and OCR.

The documents go through the same ingestion (llm/data/pipeline.py) and the checkpoint's tokenizer, and become one
token stream with an end-of-document token after each (llm/data/tokens.py's write_tokens, as val.bin is written).
The stream is scored in the windows training validates on (TokenWindows with phase 0: consecutive windows of
block_size tokens from the first), so on a run's own validation documents with the same number of windows the
result is the run's `val/bpb`. Each predicted token counts for the document it belongs to (the end-of-document
token for the document it ends): nats / ln 2 / UTF-8 bytes, summed per kind.

Kinds: `code` (the code kind), `pdf` (a PDF's text layer), `ocr` (images, and PDFs read wholly or partly by OCR),
`prose` (everything else: text, markdown, HTML, office files, e-mail).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from llm.data.document import Document
from llm.data.pipeline import ingest
from llm.data.tokens import TokenWindows, split_documents, token_byte_lengths, token_dtype, write_tokens
from llm.errors import ConfigError
from llm.model import GPT
from llm.tokenizer import IGNORE, eod_id

KINDS = ("code", "prose", "pdf", "ocr")
TEXT_LAYER = ("pdfium", "fast")  # strategies that read a PDF's text layer, no OCR


def kind_of(kind: str, strategy: str | None) -> str:
    """The bpb kind of a manifest record (its kind and the strategy that read it)."""
    if kind == "code":
        return "code"
    if kind == "image":
        return "ocr"
    if kind == "pdf":
        return "pdf" if strategy in TEXT_LAYER else "ocr"
    return "prose"


@dataclass
class Corpus:
    """Documents to score, in order, each with its bpb kind."""

    documents: list[Document]
    kinds: list[str]
    source: str  # what they are, for the results: "validation documents of <run>" or the folders


def validation_documents(data_dir: Path, val_fraction: float, seed: int) -> Corpus:
    """A training run's held-out documents, in val.bin's order: its manifest's documents split as training split
    them (split_documents with the run's data.val_fraction and seed), their text from data_dir/text/."""
    manifest = data_dir / "manifest.jsonl"
    if not manifest.is_file():
        raise ConfigError(f"tasks=[bpb]: {manifest} does not exist: name the documents to score with eval.paths=[...]")
    docs, kinds = [], {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("status") == "ok" and rec.get("text_path"):
            docs.append(
                Document(rec["path"], rec["kind"], None, rec.get("sha256") or "", text_file=data_dir / rec["text_path"])
            )
            kinds[rec["path"]] = kind_of(rec["kind"], rec.get("strategy"))
    _, held_out = split_documents(docs, val_fraction, seed)
    if not held_out:
        raise ConfigError(
            f"tasks=[bpb]: the run held out no documents (data.val_fraction={val_fraction}): "
            "name the documents to score with eval.paths=[...]"
        )
    return Corpus(held_out, [kinds[d.path] for d in held_out], f"validation documents of {data_dir.parent}")


def folder_documents(paths: Sequence[str], out_dir: Path, cache_dir: Path, settings: Mapping) -> Corpus:
    """Every document under paths, ingested as training ingests (manifest and text under out_dir)."""
    from llm.data.discover import DEFAULT_EXCLUDE, expand_paths

    found = [str(p) for p in expand_paths(list(paths), key="eval.paths")]
    result = ingest(found, out_dir, DEFAULT_EXCLUDE, settings=settings, cache_dir=cache_dir / "ingest")
    if not result.documents:
        raise ConfigError(f"eval.paths: no usable document under {found}: see {out_dir / 'manifest.jsonl'}")
    strategy = {r.path: r.strategy for r in result.records}
    kinds = [kind_of(d.kind, strategy.get(d.path)) for d in result.documents]
    return Corpus(result.documents, kinds, ", ".join(found))


@torch.no_grad()
def bits_per_byte(
    model: GPT, tokenizer: Tokenizer, corpus: Corpus, windows: int | None, batch_size: int
) -> tuple[dict[str, float], dict[str, int]]:
    """({bpb, bpb_<kind>, loss}, {documents, windows, tokens, bytes, documents_<kind>}) of corpus: bits per byte
    overall and by kind, nats per token, and what was scored.

    windows: score the first N windows only (training scores data.val_windows of them); None: all of them."""
    if windows is not None and (isinstance(windows, bool) or not isinstance(windows, int) or windows < 1):
        raise ConfigError(f"eval.windows={windows!r} must be a whole number of windows, at least 1, or null (all)")
    block, V, eod = model.config.block_size, model.config.vocab_size, eod_id(tokenizer)
    device = next(model.parameters()).device
    token_bytes = token_byte_lengths(tokenizer)
    kind_index = np.array([KINDS.index(k) for k in corpus.kinds])
    nats = np.zeros(len(KINDS))
    n_bytes = np.zeros(len(KINDS))
    n_tokens = np.zeros(len(KINDS), dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "eval.bin"
        n = write_tokens(corpus.documents, tokenizer, path)
        dtype = token_dtype(tokenizer.get_vocab_size())
        ends = np.flatnonzero(np.fromfile(path, dtype=dtype) == eod)  # document i ends at ends[i]
        data = TokenWindows(path, dtype.name, block, eod, None, "none", token_bytes)
        count = len(data) if windows is None else min(windows, len(data))
        was_training = model.training
        model.eval()
        try:
            for start in range(0, count, batch_size):
                ks = range(start, min(start + batch_size, count))
                items = [data[k] for k in ks]
                x = torch.stack([item["input"] for item in items]).to(device)
                y = torch.stack([item["target"] for item in items]).to(device)
                logits = model(x)[..., :V].float()
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="none")
                loss = loss.view(y.shape).double().cpu().numpy()
                targets = y.cpu().numpy()
                for row, k in enumerate(ks):
                    first, m = data.span(0, k)
                    positions = (first + 1 + np.arange(m)) % n  # the stream positions this window predicts
                    doc = np.searchsorted(ends, positions)  # the document each belongs to
                    kind = kind_index[doc]
                    np.add.at(nats, kind, loss[row, :m])
                    np.add.at(n_bytes, kind, token_bytes[targets[row, :m]])
                    np.add.at(n_tokens, kind, 1)
        finally:
            model.train(was_training)
    scores = {"bpb": _bpb(nats.sum(), n_bytes.sum())}
    scores |= {f"bpb_{kind}": _bpb(nats[i], n_bytes[i]) for i, kind in enumerate(KINDS) if n_tokens[i]}
    scores["loss"] = float(nats.sum() / max(n_tokens.sum(), 1))  # nats per token
    counts = {"documents": len(corpus.documents), "windows": count, "tokens": int(n_tokens.sum())}
    counts["bytes"] = int(n_bytes.sum())
    counts |= {f"documents_{kind}": int((kind_index == i).sum()) for i, kind in enumerate(KINDS) if n_tokens[i]}
    return scores, counts


def _bpb(nats: float, n_bytes: float) -> float:
    return float(nats / math.log(2) / n_bytes) if n_bytes else float("nan")
