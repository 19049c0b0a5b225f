"""The incremental cache, deleted files, and the same result with 1 or 2 workers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llm.data.pipeline import ingest
from tests.ingest_fixtures import CODE, LATIN1, image_bytes, text_pdf, write


def small_corpus(root: Path) -> Path:
    for i in range(6):
        write(root / f"src/m{i}.py", f"# module {i}\n" + CODE)
    write(root / "notes.md", "# Notes\n\nSome *markdown*.\n")
    write(root / "old.txt", LATIN1.encode("latin-1"))
    return root


def test_second_run_extracts_nothing_and_a_touched_file_only_is_redone(tmp_path):
    root = small_corpus(tmp_path / "c")
    out = tmp_path / "out"
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
    root = small_corpus(tmp_path / "c")
    out = tmp_path / "out"
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


def test_only_files_ingest_wrote_are_ever_removed(tmp_path):
    root = small_corpus(tmp_path / "c")
    write(root / "text/ideas.md", "my own notes, in a folder named text\n")  # out == the input folder
    ingest([root], root, workers=1)
    ingest([root], root, workers=1)
    assert (root / "text/ideas.md").read_text() == "my own notes, in a folder named text\n"
    mine = tmp_path / "work/text/keep.txt"
    write(mine, "not ingest's\n")
    ingest([root], tmp_path / "work", workers=1)
    assert mine.exists()


def test_an_output_folder_inside_the_input_is_not_read_back(tmp_path):
    root = small_corpus(tmp_path / "c")
    first = ingest([root], root / "corpus", workers=1)
    again = ingest([root], root / "corpus", workers=1)
    assert [d.path for d in again.documents] == [d.path for d in first.documents]
    mine = [r for r in again.records if r.path == "c/corpus"]
    assert len(mine) == 1 and mine[0].status == "excluded" and "written by ingest" in mine[0].reason
    shutil.rmtree(root / "corpus")
    ingest([root], root, workers=1)  # the output folder is the input itself
    inside = ingest([root], root, workers=1)
    assert {r.path for r in inside.records if r.status == "excluded"} >= {"c/text", "c/manifest.jsonl", "c/cache"}
    assert sorted(d.path for d in inside.documents) == sorted(d.path for d in first.documents)
