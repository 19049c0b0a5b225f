"""Ask your documents: passages indexed at ingestion with their file and page, found for a question as plain words,
given to the model within its context, and named in the answer (infer.py, the server's `sources`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from llm.chat_template import ChatTemplate, ChatTokens
from llm.config import config_dir
from llm.data.document import Document
from llm.errors import ConfigError
from llm.retrieval.context import Retriever, question_of, resolve_index, with_passages
from llm.retrieval.index import Index, fts_query
from llm.retrieval.passages import split_passages
from tests.ingest_fixtures import text_pdf, write
from tests.retrieval_fixtures import facts, facts_corpus, question, sentence


def compose_index(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose("index", overrides=list(overrides))


def test_passages_are_paragraphs_on_one_page_and_long_ones_overlap() -> None:
    long = " ".join(f"word{i}" for i in range(400))  # about 3,100 characters in one paragraph
    text = "Short one.\n\nShort two.\n\n" + long + "\n\nPage two starts. The answer is here."
    starts = {1: 0, 2: text.index("Page two")}
    passages = split_passages(text, starts, size=600, overlap=120)
    assert passages[0].text == "Short one.\n\nShort two." and passages[0].page == 1  # short paragraphs joined
    cut = [p.text for p in passages if p.text.startswith("word") or " word" in p.text[:8]]
    assert len(cut) >= 5 and all(len(t) <= 600 for t in cut)
    for a, b in zip(cut, cut[1:], strict=False):  # each piece repeats the end of the one before, whole words
        assert a.split()[-1] in b.split()[:30] and b.split()[0] in a.split()
    assert " ".join(dict.fromkeys(w for t in cut for w in t.split())) == long  # nothing lost, in order
    assert passages[-1].page == 2 and passages[-1].text == "Page two starts. The answer is here."
    assert all(p.page == 1 for p in passages[:-1])  # no passage crosses the page


def test_a_question_is_searched_as_plain_words_whatever_it_holds(tmp_path: Path) -> None:
    with Index(tmp_path / "i.sqlite", create=True) as index:
        index.update([Document("a.md", "text", "The code of vault 7 is wren3. NEAR the AND gate.", "k1")])
        for hostile in ['"', "*", "NEAR", "AND", "(", "code AND (vault", 'vault" OR "', "NOT -code ^7 :x {a}", "é ü"]:
            index.search(hostile, 3)  # never an FTS syntax error
        assert [h.path for h in index.search('what is the "code" of vault 7?', 3)] == ["a.md"]
        assert index.search("NEAR AND", 3)[0].path == "a.md"  # words, not operators
        assert index.search("the of is", 3) == [] and fts_query("what is the?") is None  # nothing to search for
        assert index.search("xylophone", 3) == []


def test_ingestion_indexes_each_document_and_a_second_run_reindexes_only_what_changed(tmp_path: Path) -> None:
    from llm.index import build

    corpus = tmp_path / "corpus"
    write(corpus / "a.md", "Alpha paragraph about apples.\n\nThe code of vault 3 is oak41.\n")
    write(corpus / "b.txt", "Beta notes on bridges and the code of vault 9 is moss17.\n")
    write(corpus / "c.md", "Gamma text: the owner of station 4 is Pera.\n")
    write(
        corpus / "book.pdf",
        text_pdf([["Cover page of the book."], ["Nothing here."], ["The code of vault 5 is fern88."]]),
    )
    cfg = compose_index(f"data.paths=[{corpus}]", f"out={tmp_path / 'idx'}", f"paths.cache_dir={tmp_path / 'cache'}")
    path = build(cfg)
    assert path == tmp_path / "idx" / "index.sqlite"

    def rows() -> dict[int, tuple[str, str]]:
        with sqlite3.connect(path) as db:
            return {i: (p, t) for i, p, t in db.execute("SELECT id, path, text FROM passages")}

    before = rows()
    with Index(path) as index:
        hit = index.search("What is the code of vault 5?", 1)[0]
        assert (hit.path, hit.page, hit.kind) == ("corpus/book.pdf", 3, "pdf")  # the page survives extraction
    write(corpus / "b.txt", "Beta notes, edited: the code of vault 9 is now cedar60.\n")
    (corpus / "c.md").unlink()
    build(cfg)
    after = rows()
    kept = {i: r for i, r in before.items() if r[0] in ("corpus/a.md", "corpus/book.pdf")}
    assert {i: r for i, r in after.items() if r[0] != "corpus/b.txt"} == kept  # the same rows, the same ids
    assert [t for p, t in after.values() if p == "corpus/b.txt"] == [
        "Beta notes, edited: the code of vault 9 is now cedar60."
    ]
    with Index(path) as index:
        assert all(h.path != "corpus/c.md" for h in index.search("owner of station 4 Pera gamma", 10))
        assert index.search("vault 9 code", 1)[0].text.endswith("cedar60.")


def test_a_missing_or_unreadable_index_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^retrieval.index=.*nowhere: no such file or folder$"):
        resolve_index(tmp_path / "nowhere", "outputs")
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match=r"^retrieval.index=.*run: no index.sqlite in that folder or its data/$"):
        resolve_index(tmp_path / "run", "outputs")
    with pytest.raises(ConfigError, match=r"^retrieval.index=last: no index.sqlite under"):
        resolve_index("last", tmp_path / "outputs")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match=r"^retrieval.index: .*junk.sqlite is not a readable index"):
        Index(junk)
    with pytest.raises(ConfigError, match=r"^retrieval.k=0 must be"):
        Retriever.from_config({"index": str(junk), "k": 0})


@pytest.fixture(scope="module")
def chatml():
    from llm.tokenizer import train_tokenizer

    tok = train_tokenizer(["The code of vault 7 is wren3. Filler words here and there. " * 50], vocab_size=400)
    return ChatTokens(ChatTemplate.chatml(), tok)


def test_passages_go_in_the_system_message_and_never_past_the_budget(tmp_path: Path, chatml) -> None:
    docs = [
        Document(f"d{i}.md", "text", f"Vault {i} has the code wren{i}. " + "Filler words here. " * 20, f"k{i}")
        for i in range(40)
    ]
    with Index(tmp_path / "i.sqlite", create=True) as index:
        index.update(docs)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "code of vault 7?"}]
        for budget in (60, 200, 1000):
            grounded, hits = Retriever(index, 10_000).ground(chatml, messages, budget)  # a huge k
            assert len(chatml.prompt_ids(grounded)) <= budget
            assert len(grounded) == 2 and grounded[0]["content"].startswith("Be brief.\n\n") == bool(hits)
        assert hits and hits[0].path == "d7.md" and len(hits) < 40 and "[1] d7.md\n" in grounded[0]["content"]
        assert question_of(grounded) == "code of vault 7?"
        none, no_hits = Retriever(index, 4).ground(chatml, [{"role": "user", "content": "the weather?"}], 1000)
        assert no_hits == [] and none == [{"role": "user", "content": "the weather?"}]
    assert with_passages([{"role": "user", "content": "q"}], hits[:1])[0]["role"] == "system"


# ---------------------------------------------------------------------------------------------- answers


@pytest.fixture(scope="module")
def index_of_facts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from llm.index import build

    tmp = tmp_path_factory.mktemp("facts")
    known = facts(seed=3)
    where = facts_corpus(tmp / "corpus", known, ocr=False)
    cfg = compose_index(f"data.paths=[{tmp / 'corpus'}]", f"out={tmp / 'idx'}", f"paths.cache_dir={tmp / 'cache'}")
    return build(cfg), where


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random model with a context long enough for passages."""
    from tests.serve_fixtures import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("model") / "run" / "checkpoints" / "last.ckpt", block_size=512)


def test_recall_at_3_over_documents_of_every_kind(index_of_facts) -> None:
    path, where = index_of_facts
    with Index(path) as index:
        found = [any((h.path, h.page) == where[q] for h in index.search(q, 3)) for q in where]
    assert sum(found) >= 0.95 * len(where), found
    assert {where[q][0].split("/", 1)[1] for q in where} >= {"reports/annual.pdf", "old/backup.zip!/kept/register.md"}


def test_the_server_names_its_passages_in_sources_streaming_or_not(index_of_facts, checkpoint) -> None:
    httpx = pytest.importorskip("httpx")
    from tests.serve_fixtures import served

    path, where = index_of_facts
    q = next(q for q in where if where[q][1] == 3)  # a fact on the PDF's third page
    with served(checkpoint, retriever=Retriever(Index(path), 2), default_max_tokens=8) as server:
        body = {"model": "llm", "messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 8}
        plain = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
        lines = []
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        nothing = {**body, "messages": [{"role": "user", "content": "xylophone quartz?"}]}
        empty = httpx.post(f"{server.url}/v1/chat/completions", json=nothing, timeout=60).json()
    sources = plain["sources"]
    assert 1 <= len(sources) <= 2 and (sources[0]["path"], sources[0]["page"]) == where[q]
    assert set(sources[0]) == {"path", "page", "kind", "score", "text"} and sources[0]["score"] > 0
    assert lines[0]["sources"] == sources and all("sources" not in line for line in lines[1:])
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in lines) == plain["choices"][0]["message"]["content"]
    )
    assert empty["sources"] == [] and empty["choices"][0]["finish_reason"] in ("stop", "length")


def test_infer_prints_the_reply_then_where_its_passages_are(index_of_facts, checkpoint, capsys) -> None:
    from llm import infer
    from tests.test_infer import compose_infer

    path, where = index_of_facts
    q = next(q for q in where if where[q][1] == 2)
    args = [f"ckpt_path={checkpoint}", f"prompt={q!r}", "chat=true", "temperature=0", "max_new_tokens=8"]
    infer.infer(compose_infer(*args, f"retrieval.index={path.parent}", "retrieval.k=2"))
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("[1] ") or out[-1].startswith("[1] ")
    assert f"[1] {where[q][0]}, page 2" in out
    with pytest.raises(ConfigError, match="retrieval.index gives passages to a chat: it needs chat=true"):
        infer.infer(compose_infer(f"ckpt_path={checkpoint}", f"retrieval.index={path}"))


def test_a_hugging_face_folder_is_served_directly_with_passages_in_its_own_template(index_of_facts, tmp_path) -> None:
    """A random Qwen2-layout model with Qwen's chat template, saved as transformers saves it, served with
    ckpt_path= its folder and retrieval: the prompt is apply_chat_template of the messages with the passages."""
    transformers = pytest.importorskip("transformers")
    httpx = pytest.importorskip("httpx")
    import torch

    from llm.loading import load
    from llm.serve.engine import Engine
    from llm.serve.request import Limits, chat_jobs
    from llm.serve.schemas import ChatRequest
    from tests.serve_fixtures import served
    from tests.test_chat import QWEN
    from tests.test_infer import compose_infer
    from tests.test_interop import NO_SPECIALS, _save_base_tokenizer

    folder = tmp_path / "qwen"
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        max_position_embeddings=1024,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        **NO_SPECIALS,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(folder)
    _save_base_tokenizer("qwen2", folder)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf_tok.chat_template = QWEN
    hf_tok.save_pretrained(folder)

    path, where = index_of_facts
    retriever = Retriever(Index(path), 3)
    loaded = load(compose_infer(f"ckpt_path={folder}", "device=cpu", "dtype=float32"))  # infer.py's and serve.py's
    assert loaded.chat_template.source == QWEN and loaded.model.config.block_size == 1024
    engine = Engine(loaded.model, loaded.tokenizer, 2, 4, False)
    limits = Limits.of(engine, "llm", 32, 30.0, 262_144, 4_096, loaded.chat_template, retriever)
    for q in list(where)[:4]:
        messages = [{"role": "user", "content": q}]
        (job,) = chat_jobs(ChatRequest(model="llm", messages=messages, max_tokens=16), limits)
        hits = retriever.index.search(q, 3)[: len(job.sources)]  # best first, as many as fit 1,024 - 16 tokens
        assert [s["path"] for s in job.sources] == [h.path for h in hits] and job.sources
        grounded = with_passages(messages, hits)
        theirs = hf_tok.apply_chat_template(grounded, add_generation_prompt=True, tokenize=True)
        ids = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
        assert job.prompt_ids == list(ids)
        assert grounded[0]["role"] == "system" and f"{where[q][0]}" in grounded[0]["content"]
    with served(folder, retriever=retriever) as server:
        body = {"model": "llm", "messages": [{"role": "user", "content": q}], "max_tokens": 4, "temperature": 0}
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
    assert answer["usage"]["prompt_tokens"] == len(job.prompt_ids) and answer["sources"] == job.sources


def test_the_grounded_task_scores_answers_sources_and_recall(index_of_facts, checkpoint, tmp_path, capsys) -> None:
    from llm.evaluate import evaluate
    from tests.test_evaluate import compose_evaluate

    path, where = index_of_facts
    values = {question(e, a): v for e, a, v in facts(seed=3)}
    lines = [
        {"question": q, "answer": values[q], "source": p.split("/", 1)[1], "page": pg} for q, (p, pg) in where.items()
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = [f"ckpt_path={checkpoint}", "tasks=[grounded]", f"eval.questions={questions}", f"retrieval.index={path}"]
    results = evaluate(compose_evaluate(*args, "retrieval.k=3", "max_gen_toks=8", f"out={tmp_path / 'eval'}"))
    scores = results["results"]["grounded"]
    assert scores["recall@3,none"] >= 0.95  # retrieval alone: the expected file (and page) among the best 3
    assert 0 < scores["source_share,none"] <= scores["recall@3,none"]  # what fit the context of 512 - 8
    assert scores["accuracy,none"] <= 0.2 and scores["accuracy_without,none"] <= 0.2  # a random model knows nothing
    assert "| grounded | recall@3 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["configs"]["grounded"]["k"] == 3
    with pytest.raises(ConfigError, match=r"^tasks=\[grounded\] needs retrieval.index"):
        evaluate(compose_evaluate(f"ckpt_path={checkpoint}", "tasks=[grounded]", f"eval.questions={questions}"))
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(ConfigError, match=r"^eval.questions=.*bad.jsonl: line 1 is not a question"):
        evaluate(compose_evaluate(*args[:2], f"eval.questions={tmp_path / 'bad.jsonl'}", args[3]))


def test_the_question_and_answer_helpers_agree() -> None:
    entity, attribute, value = facts()[0]
    assert sentence(entity, attribute, value).startswith(f"The {attribute} of {entity} is")
    assert question(entity, attribute).endswith("?")


def test_made_up_grounded_conversations_hold_each_answer_in_one_passage_and_fit_the_context() -> None:
    import re

    from llm.retrieval.grounded import synthetic

    made = synthetic(300, passages=4, questions=3, seed=5)
    assert made == synthetic(300, passages=4, questions=3, seed=5) and made != synthetic(300, 4, 3, seed=6)
    forms, shapes = set(), set()
    for system, *turns in made:
        assert system["role"] == "system" and [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2)
        blocks = re.split(r"\n\n(?=\[\d\] )", system["content"])[1:]
        assert [b[:4] for b in blocks] == [f"[{i}] " for i in range(1, len(blocks) + 1)]  # numbered as retrieval does
        asked = [re.match(r"The (.+) of (.+) is (.+)\.$", a["content"]).groups() for a in turns[1::2]]
        assert len(set(asked)) == len(asked)  # never the same question twice
        for _, entity, value in asked:
            assert (
                sum(value in b and entity.lower() in b.lower() for b in blocks) >= 1
            )  # the answer is there to be read
        forms |= {t["content"].split()[0] for t in turns[::2]}
        shapes.add((len(blocks), len(asked)))
    assert len(forms) >= 5  # many question forms
    assert {(1, 1), (4, 3)} <= shapes and len(shapes) >= 8  # one to four passages, one to three questions
    short = synthetic(50, passages=4, questions=3, seed=5, fits=lambda m: len(m[0]["content"]) < 250)
    assert all(len(m[0]["content"]) < 250 or (len(m) == 3 and m[0]["content"].count("\n[") == 1) for m in short)
    assert max(len(m) for m in short) > 3  # fitting drops passages first, then questions


def test_a_context_field_is_written_as_retrieval_writes_passages() -> None:
    from llm.data.conversations import parse_line
    from llm.retrieval.context import passages_text

    turns = [{"role": "user", "content": "code?"}, {"role": "assistant", "content": "wren3"}]
    line = {"messages": turns, "context": [{"path": "a.pdf", "page": 2, "text": "The code is wren3."}, "More."]}
    messages = parse_line(json.dumps(line))
    assert messages[0] == {
        "role": "system",
        "content": passages_text([("a.pdf", 2, "The code is wren3."), ("context", None, "More.")]),
    }
    assert "[1] a.pdf, page 2\nThe code is wren3." in messages[0]["content"] and messages[1:] == turns
    with pytest.raises(ValueError, match="context"):
        parse_line(json.dumps({"messages": turns, "context": [{"no": "text"}]}))
    with pytest.raises(ValueError, match=r"messages\[0\] is not an object"):  # a bad line, reported: never a crash
        parse_line(json.dumps({"messages": [1], "context": "passage"}))


def _index_in_a_process(cache: str, out: str, rounds: int) -> None:
    from llm.retrieval.build import write_index

    docs = [Document(f"d{i}.md", "text", f"Vault {i} has the code wren{i}. " * 30, f"k{i}") for i in range(30)]
    for r in range(rounds):  # each round changes one document: both processes write
        docs[r % 30] = Document(docs[r % 30].path, "text", f"Vault {r} changed, round {r}.", f"k{r % 30}-{r}")
        write_index(docs, ["corpus"], cache, out)


def test_three_processes_indexing_one_corpus_into_one_run_at_once(tmp_path: Path) -> None:
    """The nodes of a job on one machine run ingestion side by side: the cached index and the run's copy stay
    whole (a shared temporary file once made SQLite fail with a disk I/O error)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    args = (str(tmp_path / "cache"), str(tmp_path / "run" / "data"), 20)
    workers = [ctx.Process(target=_index_in_a_process, args=args) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    with Index(tmp_path / "run" / "data" / "index.sqlite") as index:
        assert index.search("vault 29 code", 1)[0].path == "d29.md"
        assert index.db.execute("SELECT count(DISTINCT path) FROM passages").fetchone()[0] == 30
    assert not list((tmp_path / "run" / "data").glob("*.tmp"))
