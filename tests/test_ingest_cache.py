"""The incremental cache, deleted files, and the same result with 1 or 2 workers."""

from __future__ import annotations

import json
from pathlib import Path

from llm.data.ingest import ingest
from tests.ingest_fixtures import CODE, LATIN1, image_bytes, text_pdf, write


def small_corpus(root: Path) -> Path:
    for i in range(6):
        write(root / f"src/m{i}.py", f"# module {i}\n" + CODE)
    write(root / "notes.md", "# Notes\n\nSome *markdown*.\n")
    write(root / "old.txt", LATIN1.encode("latin-1"))
    return root


def test_second_run_extracts_nothing_and_a_touched_file_only_is_redone(tmp_path):
    root, out = small_corpus(tmp_path / "c"), tmp_path / "out"
    first = ingest([root], out, workers=2)
    assert first.extracted == 8 and len(first.documents) == 8
    second = ingest([root], out, workers=2)
    assert second.extracted == 0 and all(r.cached for r in second.records)
    assert [d.text for d in second.documents] == [d.text for d in first.documents]
    write(root / "src/m3.py", "# changed\n")
    third = ingest([root], out, workers=2)
    assert third.extracted == 1
    assert [r.path for r in third.records if not r.cached] == ["c/src/m3.py"]
    assert next(d for d in third.documents if d.path == "c/src/m3.py").text == "# changed\n"


def test_deleted_files_drop_out_of_the_corpus(tmp_path):
    root, out = small_corpus(tmp_path / "c"), tmp_path / "out"
    ingest([root], out, workers=1)
    (root / "notes.md").unlink()
    result = ingest([root], out, workers=1)
    assert "c/notes.md" not in {d.path for d in result.documents}
    assert not (out / "text/c/notes.md.txt").exists()
    assert "c/notes.md" not in (out / "manifest.jsonl").read_text(encoding="utf-8")


def test_changed_settings_re_extract(tmp_path):
    write(tmp_path / "c/a.pdf", text_pdf([["words"]]))
    ingest([tmp_path / "c"], tmp_path / "out", workers=1)
    again = ingest([tmp_path / "c"], tmp_path / "out", workers=1, settings={"strategy": {"scanned": None}})
    assert again.extracted == 1


def test_two_workers_give_the_same_manifest_and_text_as_one(tmp_path):
    root = small_corpus(tmp_path / "c")
    write(root / "doc.pdf", text_pdf([["A text layer."]]))
    write(root / "sign.png", image_bytes(["Same either way"], "PNG"))
    write(root / "bad.pdf", b"%PDF-1.4\nnot really")
    write(root / "copy.py", "# module 0\n" + CODE)

    def run(n: int) -> tuple[list[dict], dict[str, str]]:
        out = tmp_path / f"out{n}"
        ingest([root], out, workers=n)
        recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
        for r in recs:
            r.pop("seconds")
        texts = {r["path"]: (out / r["text_path"]).read_text(encoding="utf-8") for r in recs if "text_path" in r}
        return recs, texts

    assert run(1) == run(2)
