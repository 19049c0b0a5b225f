import json

import numpy as np
import pytest
import torch

from llm.data.datamodule import TextDataModule
from llm.data.pipeline import Document
from llm.data.tokens import TokenWindows, split_documents, write_tokens
from llm.tokenizer import eod_id, train_tokenizer


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
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(ValueError, match="data.val_fraction"):
        split_documents(docs(3), 1.5, seed=0)


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


def test_windows_are_shifted_by_one_and_reproducible(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "t.bin")
    ds = TokenWindows(tmp_path / "t.bin", "uint16", block_size=32, num_samples=10, random=True, seed=3)
    x, y = ds[4]
    assert x.shape == y.shape == (32,) and x.dtype == torch.int64
    assert torch.equal(x[1:], y[:-1]) and y[-1] == x[-1] + 1
    assert torch.equal(ds[4][0], TokenWindows(tmp_path / "t.bin", "uint16", 32, 10, True, 3)[4][0])
    seq = TokenWindows(tmp_path / "t.bin", "uint16", block_size=100, random=False)
    assert len(seq) == 9 and seq[1][0][0] == 100 and seq[8][1][-1] == 900


def test_datamodule_caches_tokenizer_and_tokens(tmp_path, corpus):
    def make(out):
        out, cache = str(tmp_path / out), str(tmp_path / "cache")
        return TextDataModule([str(corpus)], out, cache, vocab_size=300, block_size=16, batch_size=2, val_fraction=0.25)

    dm = make("a")
    dm.prepare_data()
    dm.setup("fit")
    folder = dm.folder
    meta = json.loads((folder / "meta.json").read_text())
    assert set(meta["train_docs"]).isdisjoint(meta["val_docs"]) and len(meta["val_docs"]) == 3
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    x, y = next(iter(dm.train_dataloader()))
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
    dm = TextDataModule([str(tmp_path / "empty")], str(tmp_path / "o"), str(tmp_path / "c"))
    with pytest.raises(RuntimeError, match="no usable document"):
        dm.prepare_data()


def test_new_text_from_the_same_files_gets_new_tokens(tmp_path, corpus, monkeypatch):
    """The token cache is keyed by the text (source hash, reader version and settings), not the source alone."""
    import dataclasses

    from llm.data import kinds

    def folder():
        dm = TextDataModule(
            [str(corpus)], str(tmp_path / "out"), str(tmp_path / "cache"), vocab_size=300, block_size=16, batch_size=2
        )
        dm.prepare_data()
        dm.setup("fit")
        return dm.folder

    before = folder()
    assert folder() == before
    bumped = [dataclasses.replace(f, version=99) if f.kind == "text" else f for f in kinds.REGISTRY.formats]
    monkeypatch.setattr(kinds, "REGISTRY", kinds.Registry(bumped))
    assert folder() != before  # the text reader changed: its text may have too


def test_a_token_cache_finished_by_another_run_meanwhile_wins(tmp_path, corpus, monkeypatch):
    """Two runs may build the same entry at once: each in its own folder; the first to finish is kept."""
    import shutil

    import llm.data.datamodule as datamodule

    def make():
        return TextDataModule([str(corpus)], str(tmp_path / "out"), str(tmp_path / "cache"), vocab_size=300,
                              block_size=16, batch_size=2)  # fmt: skip

    first = make()
    first.prepare_data()
    first.setup("fit")
    entry = first.folder
    shutil.copytree(entry, tmp_path / "saved")
    shutil.rmtree(entry)
    stale = entry.with_name(f"{entry.name}.999999999.tmp")  # a killed run's build folder
    stale.mkdir()
    build = datamodule.train_tokenizer

    def meanwhile(*args, **kwargs):  # another run finishes the same entry while this one trains its tokenizer
        shutil.copytree(tmp_path / "saved", entry)
        return build(*args, **kwargs)

    monkeypatch.setattr(datamodule, "train_tokenizer", meanwhile)
    second = make()
    second.prepare_data()
    second.setup("fit")
    assert second.folder == entry and second.meta == first.meta
    assert not list(entry.parent.glob("*.tmp"))  # this run's build folder and the stale one are gone
