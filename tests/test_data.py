import json

import numpy as np
import pytest
import torch

from llm.data.document import Document
from llm.data.tokens import (
    IGNORE,
    EpochSampler,
    TokenWindows,
    document_starts,
    split_documents,
    token_byte_lengths,
    tokenizer_sample,
    write_tokens,
)
from llm.errors import ConfigError
from llm.tokenizer import SPECIAL_TOKENS, eod_id, train_tokenizer
from tests.conftest import make_datamodule


def docs(n: int) -> list[Document]:
    return [Document(f"root/doc{i}.txt", "text", f"document number {i} " * (i + 1), f"{i:064x}") for i in range(n)]


def test_split_keeps_each_document_on_one_side_and_is_stable():
    train, val = split_documents(docs(50), 0.2, seed=7)
    assert {d.path for d in train}.isdisjoint(d.path for d in val)
    assert len(train) + len(val) == 50 and len(val) == 10
    assert split_documents(list(reversed(docs(50))), 0.2, seed=7)[1] == val  # file order does not matter
    train2, _ = split_documents(docs(60), 0.2, seed=7)
    moved = {d.path for d in val} & {d.path for d in train2}
    assert len(moved) <= 2  # adding documents moves at most a few near the boundary


def test_split_gives_both_sides_a_document():
    train, val = split_documents(docs(2), 0.01, seed=0)
    assert len(train) == 1 and len(val) == 1  # a bad data.val_fraction is refused by TextDataModule (test_configs)


def test_token_file_puts_eod_after_every_document(tmp_path):
    ds = docs(3)
    tok = train_tokenizer([d.text for d in ds], vocab_size=300)
    n = write_tokens(ds, tok, tmp_path / "t.bin")
    tokens = np.fromfile(tmp_path / "t.bin", dtype=np.uint16)
    assert len(tokens) == n
    eod = eod_id(tok)
    ends = np.flatnonzero(tokens == eod)
    assert len(ends) == 3 and ends[-1] == n - 1
    first = tokens[: ends[0]].tolist()
    assert tok.decode(first) == ds[0].text


def test_token_file_streamed_in_small_pieces_equals_the_whole(tmp_path):
    """Long documents are encoded a piece at a time, from their files: the tokens are those of the whole text."""
    rng = np.random.default_rng(0)
    vocab = ["alpha", "beta", "  indented", "tab\tbed", "x", "", " ", "9 lives", "don't", "  ", "é-ü"]
    texts = ["\n".join(rng.choice(vocab, size=400)) + tail for tail in ("", "\n", "\n\n  \n")]
    ds = []
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(text, encoding="utf-8", newline="")
        ds.append(Document(f"r/{i}.txt", "text", None, f"{i:064x}", text_file=tmp_path / f"{i}.txt"))
    tok = train_tokenizer(texts, vocab_size=300)
    whole = write_tokens(ds, tok, tmp_path / "whole.bin")
    small = write_tokens(ds, tok, tmp_path / "small.bin", chunk_bytes=200, piece_chars=50)  # ~60 pieces a document
    assert whole == small
    assert np.array_equal(
        np.fromfile(tmp_path / "whole.bin", np.uint16), np.fromfile(tmp_path / "small.bin", np.uint16)
    )


def test_tokenizer_sample_keeps_a_small_corpus_whole_and_samples_a_large_one():
    ds = docs(40)  # 20..800 bytes each
    total = sum(len(d.text.encode()) for d in ds)
    assert list(tokenizer_sample(ds, total, seed=0)) == [d.text for d in ds]
    sample = list(tokenizer_sample(ds, total // 4, seed=0))
    assert sum(len(t.encode()) for t in sample) == total // 4  # the budget, the last text cut to fit
    assert sorted(sample) == sorted(tokenizer_sample(list(reversed(ds)), total // 4, seed=0))  # drawn by path
    assert 1 < len(sample) < len(ds)
    assert sample != list(tokenizer_sample(ds, total // 4, seed=1))


def test_windows_are_shifted_by_one_and_reproducible(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "t.bin")
    ds = TokenWindows(tmp_path / "t.bin", "uint16", block_size=32, eod=0, seed=3, align="none")
    x, y = ds[(0, 4)]["input"], ds[(0, 4)]["target"]
    assert x.shape == y.shape == (32,) and x.dtype == torch.int64
    assert torch.equal(x[1:], y[:-1]) and y[-1] == x[-1] + 1
    assert torch.equal(
        ds[(0, 4)]["input"], TokenWindows(tmp_path / "t.bin", "uint16", 32, 0, 3, "none")[(0, 4)]["input"]
    )
    assert not torch.equal(ds[(0, 4)]["input"], ds[(1, 4)]["input"])  # another epoch, another phase
    seq = TokenWindows(tmp_path / "t.bin", "uint16", block_size=100, eod=0, seed=None, align="none")
    assert len(seq) == 10 and seq[(0, 1)]["input"][0] == 100 and seq[(0, 8)]["target"][-1] == 900
    assert seq[(0, 9)]["target"][-1] == 0  # the last window wraps round: the first token is a target too
    assert torch.equal(seq[(0, 3)]["input"], seq[(7, 3)]["input"])  # seed=None: the same windows every epoch
    assert torch.equal(ds[4]["input"], ds[(0, 4)]["input"])  # a plain index: that window of epoch 0


def token_stream(n: int, mean_doc: float, seed: int) -> np.ndarray:
    """n tokens of ids 1..299 with end-of-document (0) ending documents of random lengths, the last at n - 1."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 300, n).astype(np.uint16)
    tokens[rng.random(n) < 1 / mean_doc] = 0
    tokens[-1] = 0
    return tokens


def epoch_targets(ds: TokenWindows, tokens: np.ndarray, epoch: int) -> np.ndarray:
    """The positions every window of the epoch predicts, after checking each item against the token stream."""
    n = len(tokens)
    positions = []
    for k in range(len(ds)):
        first, count = ds.span(epoch, k)
        assert 1 <= count <= ds.block_size
        x, y = ds[(epoch, k)]["input"], ds[(epoch, k)]["target"]
        read = (first + np.arange(count + 1)) % n
        assert np.array_equal(x[:count].numpy(), tokens[read[:-1]]) and np.array_equal(
            y[:count].numpy(), tokens[read[1:]]
        )
        assert (x[count:] == 0).all() and (y[count:] == IGNORE).all()  # padding: EOD in, nothing to predict
        positions.append(read[1:])
    return np.concatenate(positions)


@pytest.mark.parametrize("n_tokens", [1, 31, 32, 33, 700])
@pytest.mark.parametrize("block_size", [1, 7, 32, 100])
@pytest.mark.parametrize("align", ["none", "document"])
def test_an_epoch_predicts_every_token_exactly_once(tmp_path, n_tokens, block_size, align):
    tokens = token_stream(n_tokens, mean_doc=20, seed=n_tokens + block_size)
    tokens.tofile(tmp_path / "t.bin")
    ds = TokenWindows(tmp_path / "t.bin", "uint16", block_size, eod=0, seed=5, align=align)
    for epoch in range(3):
        assert np.array_equal(np.sort(epoch_targets(ds, tokens, epoch)), np.arange(n_tokens))
    if align == "none" and block_size > 1 and n_tokens > block_size:
        assert len({ds.phase(e) for e in range(10)}) > 1  # the cuts move between epochs


@pytest.mark.parametrize("mean_doc", [5, 40, 400])
def test_document_aligned_windows_start_at_document_starts(tmp_path, mean_doc):
    block_size = 32
    tokens = token_stream(5000, mean_doc, seed=mean_doc)
    tokens.tofile(tmp_path / "t.bin")
    ds = TokenWindows(tmp_path / "t.bin", "uint16", block_size, eod=0, seed=5, align="document")
    starts = set(document_starts(tokens, 0).tolist())
    assert starts == {0, *(np.flatnonzero(tokens[:-1] == 0) + 1).tolist()}
    spans = [ds.span(0, k) for k in range(len(ds))]
    for k, (first, _) in enumerate(spans):
        if first in starts:
            continue
        # not a document start: the previous window was a full one, inside a document longer than a window
        before, full = spans[k - 1]
        assert full == block_size and before + block_size == first
        assert not starts & set(range(before + 1, first + 1))
    continued = sum(first not in starts for first, _ in spans)
    if mean_doc == 5:  # short documents: several packed into a window, never a window begun mid-document
        assert continued == 0 and len(ds) < len(starts) / 3
    if mean_doc == 400:  # long documents: split into consecutive windows
        assert continued > len(ds) / 2
    assert np.array_equal(np.sort(epoch_targets(ds, tokens, 0)), np.arange(len(tokens)))


@pytest.mark.parametrize("align", ["none", "document"])
def test_two_ranks_share_an_epoch_without_overlap_and_resume_midway(tmp_path, align):
    tokens = token_stream(3001, mean_doc=30, seed=1)
    tokens.tofile(tmp_path / "t.bin")
    ds = TokenWindows(tmp_path / "t.bin", "uint16", 16, eod=0, seed=5, align=align)

    def keys(epoch: int, rank: int, done: int = 0) -> list[tuple[int, int]]:
        return list(EpochSampler(len(ds), 4, seed=9, rank=rank, world_size=2, position=lambda: (epoch, done)))

    for epoch in range(2):
        ranks = [keys(epoch, 0), keys(epoch, 1)]
        assert set(ranks[0]).isdisjoint(ranks[1])
        assert sorted(ranks[0] + ranks[1]) == [(epoch, k) for k in range(len(ds))]
        assert len(ranks[0]) == len(EpochSampler(len(ds), 4, 9, 0, 2))
        assert keys(epoch, 1, done=3) == ranks[1][3 * 4 :]  # three batches done: the rest, in the same order
    assert [k for _, k in keys(0, 0)] != [k for _, k in keys(1, 0)]  # each epoch its own order


def test_bad_align_is_named(tmp_path, corpus):
    with pytest.raises(ConfigError, match=r"data.align=pages must be one of: none, document"):
        make_datamodule(tmp_path, [str(corpus)], align="pages")


def test_byte_lengths_add_up_to_the_utf8_bytes_of_the_text():
    tricky = [
        "héllo wörld, naïve café ",
        "日本語のテキスト ",
        "emoji 😀👍🏽 family 👨‍👩‍👧 ",
        "\t  spaces\n\n\r\n",
        "def f(x):\n    return x\n",
    ]
    tok = train_tokenizer([t * 20 for t in tricky], vocab_size=400)
    lengths = token_byte_lengths(tok)
    eod = eod_id(tok)
    special = [tok.token_to_id(t) for t in SPECIAL_TOKENS]  # the end-of-document token and the chat markers
    assert lengths.shape == (tok.get_vocab_size(),) and (lengths[special] == 0).all()
    assert (np.delete(lengths, special) >= 1).all()
    for text in [*tricky, "".join(tricky), "unseen: Ωmega ∑ 𝔘nicode \u00a0 ", "<|endoftext|> <|im_end|> are text"]:
        ids = tok.encode(text).ids
        assert lengths[ids].sum() == len(text.encode("utf-8")), text
    whole = [i for i in range(tok.get_vocab_size()) if i != eod and "\ufffd" not in tok.decode([i])]
    assert len(whole) > 150  # tokens that are whole characters: their decoded text has their byte count
    assert all(lengths[i] == len(tok.decode([i]).encode("utf-8")) for i in whole)


def test_datamodule_caches_tokenizer_and_tokens(tmp_path, corpus):
    def make(out):
        return make_datamodule(
            tmp_path,
            [str(corpus)],
            out_dir=str(tmp_path / out),
            vocab_size=300,
            block_size=16,
            batch_size=2,
            val_fraction=0.25,
        )

    dm = make("a")
    dm.prepare_data()
    dm.setup("fit")
    folder = dm.folder
    meta = json.loads((folder / "meta.json").read_text())
    assert set(meta["train_docs"]).isdisjoint(meta["val_docs"]) and len(meta["val_docs"]) == 3
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    batch = next(iter(dm.train_dataloader()))
    x = batch["input"]
    assert x.shape == (2, 16)

    dm2 = make("b")
    dm2.prepare_data()  # unchanged corpus: same folder, nothing rebuilt
    dm2.setup("fit")
    assert dm2.folder == folder and (folder / "tokenizer.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "b" / "manifest.jsonl").exists() and (tmp_path / "b" / "tokenizer.json").exists()

    (corpus / "new.txt").write_text("a brand new document " * 30)
    dm3 = make("c")
    dm3.prepare_data()
    dm3.setup("fit")
    assert dm3.folder != folder  # the corpus changed: tokenized again


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    dm = make_datamodule(tmp_path, [str(tmp_path / "empty")])
    with pytest.raises(ConfigError, match="^data.paths: no usable document"):
        dm.prepare_data()


def test_new_text_from_the_same_files_gets_new_tokens(tmp_path, corpus, monkeypatch):
    """The token cache is keyed by the text (source hash, reader version and settings), not the source alone."""
    import dataclasses

    from llm.data import formats

    def folder():
        dm = make_datamodule(tmp_path, [str(corpus)], vocab_size=300, block_size=16, batch_size=2)
        dm.prepare_data()
        dm.setup("fit")
        return dm.folder

    before = folder()
    assert folder() == before
    bumped = [dataclasses.replace(f, version=99) if f.kind == "text" else f for f in formats.REGISTRY.formats]
    monkeypatch.setattr(formats, "REGISTRY", formats.Registry(bumped))
    assert folder() != before  # the text reader changed: its text may have too


def test_a_token_cache_finished_by_another_run_meanwhile_wins(tmp_path, corpus, monkeypatch):
    """Two runs may build the same entry at once: each in its own folder; the first to finish is kept."""
    import shutil

    import llm.data.tokens as tokens

    def make():
        return make_datamodule(tmp_path, [str(corpus)], vocab_size=300, block_size=16, batch_size=2)

    first = make()
    first.prepare_data()
    first.setup("fit")
    entry = first.folder
    shutil.copytree(entry, tmp_path / "saved")
    shutil.rmtree(entry)
    stale = entry.with_name(f"{entry.name}.999999999.tmp")  # a killed run's build folder
    stale.mkdir()
    build = tokens.train_tokenizer

    def meanwhile(*args, **kwargs):  # another run finishes the same entry while this one trains its tokenizer
        shutil.copytree(tmp_path / "saved", entry)
        return build(*args, **kwargs)

    monkeypatch.setattr(tokens, "train_tokenizer", meanwhile)
    second = make()
    second.prepare_data()
    second.setup("fit")
    assert second.folder == entry and second.meta == first.meta
    assert not list(entry.parent.glob("*.tmp"))  # this run's build folder and the stale one are gone
