"""Ask your documents, end to end: a tiny model trained from scratch on a folder of documents, then taught to answer
from passages (experiment=grounded), served with retrieval.index= its run, answers their questions with the file
and page. About 25 minutes on two cores: marked `long`, run by `make test-long`, not by `make test`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llm.retrieval.context import Retriever
from tests.conftest import compose_train
from tests.retrieval_fixtures import facts, facts_corpus

pytestmark = [pytest.mark.long, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SHAPE = ["model.config.block_size=256", "data.batch_size=16", "trainer.accelerator=cpu"]
# a model that has never read its context: Muon learns to copy from it about twice as fast as AdamW (docs/retrieval.md)
FROM_SCRATCH = ["optim=muon", "optim.lr=8e-3", "data.synthetic=20000", "trainer.max_steps=3000"]


def ask(url: str, question: str) -> dict:
    import httpx

    body = {"model": "llm", "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 24}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
    return {"text": reply["choices"][0]["message"]["content"], "sources": reply.get("sources", [])}


def test_a_tiny_model_from_scratch_answers_from_its_documents_through_the_server(tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed: the corpus holds a scanned page")
    from llm.train import train
    from tests.serve_fixtures import served

    known = facts(seed=11)
    corpus = tmp_path / "corpus"
    where = facts_corpus(corpus, known)  # a 3-page PDF, a .docx, Markdown, a scan, a .zip member, filler
    for page in sorted((REPO / "docs").glob("*.md"))[:6]:  # and prose: what a tokenizer and a base learn from
        shutil.copy(page, corpus / "misc" / page.name)
    base = compose_train(tmp_path / "base", [*SHAPE, f"data.paths=[{corpus}]", "trainer.max_steps=60"], tiny=False)
    train(base)
    tuned = compose_train(
        tmp_path / "tuned",
        [*SHAPE, "experiment=grounded", f"init_from={base.paths.output_dir}", *FROM_SCRATCH],
        tiny=False,
    )
    train(tuned)
    checkpoint = Path(tuned.paths.output_dir) / "checkpoints" / "last.ckpt"
    values = {f"What is the {a} of {e}?": v for e, a, v in known if f"What is the {a} of {e}?" in where}
    retriever = Retriever.from_config({"index": base.paths.output_dir, "k": 4}, tmp_path)
    with served(checkpoint, retriever=retriever, default_max_tokens=24) as server:
        grounded = {q: ask(server.url, q) for q in where}
    with served(checkpoint, default_max_tokens=24) as server:
        plain = {q: ask(server.url, q) for q in where}
    right = [q for q in where if values[q] in grounded[q]["text"]]
    cited = [q for q in right if any((s["path"], s.get("page")) == where[q] for s in grounded[q]["sources"])]
    report = {q: (values[q], grounded[q]["text"], [s["path"] for s in grounded[q]["sources"]]) for q in where}
    assert len(right) >= 0.75 * len(where), report
    assert len(cited) >= 0.9 * len(right), report
    assert sum(values[q] in plain[q]["text"] for q in where) <= 0.2 * len(where), plain
    assert all(not a["sources"] for a in plain.values())
