"""A hostile folder: every file accounted for, each bad one with the right status and a reason."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from llm.data import formats
from llm.data.discover import printable
from llm.data.formats import Format
from llm.data.pipeline import ingest
from llm.data.reader import Settings
from llm.data.worker import Task, run_task
from llm.ingest import main
from tests import ingest_readers
from tests.ingest_fixtures import GOOD, GOOD_BY_OCR, HOSTILE, hostile_corpus, needs_ocr, use_formats, write


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = hostile_corpus(tmp_path_factory.mktemp("in") / "hostile")
    out = tmp_path_factory.mktemp("out")
    code = main([str(root), "--out", str(out), "--workers", "2"])
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return root, out, code, {r["path"]: r for r in map(json.loads, lines)}


def test_run_goes_on_and_exits_zero(run):
    assert run[2] == 0


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_file_gets_its_status_and_a_reason(run, name):
    status, word = HOSTILE[name]
    rec = run[3][f"hostile/{name}"]
    assert rec["status"] == status, rec
    assert word.lower() in rec["reason"].lower(), rec


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=needs_ocr) if name in GOOD_BY_OCR else name for name in sorted(GOOD)]
)
def test_text_recovered_from_every_good_file(run, name):
    rec = run[3][printable(f"hostile/{name}")]
    assert rec["status"] == "ok", rec
    assert GOOD[name].lower() in (run[1] / rec["text_path"]).read_text(encoding="utf-8").lower()


def test_every_entry_is_accounted_for(run):
    root, _, _, manifest = run
    expected = set()
    for dirpath, dirnames, filenames in os.walk(root):  # links not followed: they are entries themselves
        rel = os.path.relpath(dirpath, root.parent)
        for name in list(dirnames):
            if name in (".git", "node_modules") or os.path.islink(os.path.join(dirpath, name)):
                expected.add(printable(f"{rel}/{name}"))
                dirnames.remove(name)
        expected |= {printable(f"{rel}/{n}") for n in filenames}
    assert set(manifest) == expected
    assert len(manifest) >= 20


def test_no_usable_document_is_a_clear_error(tmp_path, capsys):
    write(tmp_path / "only/empty.txt", b"")
    assert main([str(tmp_path / "only"), "--out", str(tmp_path / "out")]) == 1
    assert "no usable document" in capsys.readouterr().err


def alive(pid: int) -> bool:
    """Whether a process still runs (a zombie waiting for a reaper does not), after up to 5 s for it to go."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        time.sleep(0.05)
    return True


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="no process groups on this platform")
def test_time_limit_kills_the_file_and_its_child_processes_not_the_run(tmp_path, monkeypatch):
    use_formats(monkeypatch, Format("text", ingest_readers.hang, version=1, extensions={".hang": None}))
    pid_file = tmp_path / "child.pid"
    write(tmp_path / "in/slow.hang", str(pid_file))  # scheduled first: the larger file
    write(tmp_path / "in/fine.py", "x = 1\n")
    # 3 s: time for the worker to start the reader's child even on a busy machine
    result = ingest([tmp_path / "in"], tmp_path / "out", settings={"timeout_s": 3}, workers=1)
    status = {r.path: r for r in result.records}
    assert status["in/slow.hang"].status == "error"
    assert status["in/slow.hang"].reason == "timed out after 3 s (ingest.timeout_s)"
    assert status["in/fine.py"].status == "ok"  # in the worker that replaced the killed one
    assert not alive(int(pid_file.read_text()))  # the reader's child went with its process group


@needs_ocr
def test_time_limit_kills_ocr(tmp_path):
    from tests.ingest_fixtures import scanned_pdf

    write(tmp_path / "in/slow.pdf", scanned_pdf([["a page that takes a while"]] * 40))  # ~0.2 s of OCR a page
    write(tmp_path / "in/fine.py", "x = 1\n")
    result = ingest([tmp_path / "in"], tmp_path / "out", settings={"timeout_s": 1.5}, workers=1)
    status = {r.path: r for r in result.records}
    assert status["in/slow.pdf"].status == "error" and "timed out" in status["in/slow.pdf"].reason
    assert status["in/fine.py"].status == "ok"


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is enforced by Linux only")
def test_memory_guard_turns_into_an_error_record(tmp_path, monkeypatch):
    use_formats(monkeypatch, Format("text", ingest_readers.allocate, version=1, extensions={".alloc": None}))
    write(tmp_path / "in/a.alloc", "a file whose reader asks for all the memory a worker may have\n")
    write(tmp_path / "in/b.py", "x = 1\n")
    # the shipped limit: above the ~1.7 GB address space of a worker that has unstructured imported
    result = ingest([tmp_path / "in"], tmp_path / "out", settings={"max_memory_mb": 6144}, workers=1)
    big, py = result.records
    assert big.status == "error"
    assert big.reason.startswith("out of memory (ingest.max_memory_mb=6144): MemoryError"), big
    assert py.status == "ok"  # read after it, by the same worker


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL on this platform")
def test_a_worker_that_dies_becomes_an_error_record_and_is_replaced(tmp_path, monkeypatch):
    use_formats(monkeypatch, Format("text", ingest_readers.crash, version=1, extensions={".crash": None}))
    write(tmp_path / "in/a.crash", "a file whose reader kills its worker\n")
    write(tmp_path / "in/b.py", "x = 1\n")
    result = ingest([tmp_path / "in"], tmp_path / "out", workers=1)
    dead, py = result.records
    assert (dead.status, dead.reason) == ("error", "worker killed by SIGKILL (out of memory?) while reading this file")
    assert py.status == "ok"


def test_a_missing_ocr_program_is_named_and_not_cached(tmp_path, monkeypatch):
    from llm.data import ocr
    from tests.ingest_fixtures import image_bytes

    monkeypatch.setattr(ocr.shutil, "which", lambda name: None)
    png = write(tmp_path / "a.png", image_bytes(["words"], "PNG"))
    out = run_task(Task(0, str(png), formats.REGISTRY.kind_of(png)[0].read), Settings.from_mapping())
    assert out["status"] == "error" and out["transient"]
    assert "tesseract not found" in out["reason"] and "tesseract-ocr" in out["reason"]


def test_a_missing_package_is_named_and_not_cached(tmp_path):
    from llm.data.cache import Cache

    def needs_a_package(path, language, settings):
        raise ModuleNotFoundError("No module named 'pypdf'")

    out = run_task(Task(0, str(write(tmp_path / "a.txt", "words\n")), needs_a_package), Settings.from_mapping())
    assert out["status"] == "error" and out["transient"] and "missing Python package" in out["reason"]
    cache = Cache(tmp_path / "cache")
    cache.put("k", out, Settings.from_mapping())
    assert cache.get("k", Settings.from_mapping()) is None  # tried again once the package is installed


def test_an_image_just_over_the_pixel_limit_is_skipped_like_a_bomb(tmp_path):
    import warnings

    from PIL import Image

    from tests.ingest_fixtures import bomb_png

    png = write(tmp_path / "big.png", bomb_png(side=1_500))  # 2.25M pixels: between 1x and 2x the limit
    read = formats.REGISTRY.kind_of(png)[0].read
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # as in an ingest worker
        out = run_task(Task(0, str(png), read), Settings.from_mapping({"max_image_pixels": 2_000_000}))
    assert out["status"] == "skipped" and "max_image_pixels=2000000" in out["reason"]


def test_names_that_print_alike_and_files_named_like_folders_all_arrive(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    for raw, words in ((b"caf\xe9.txt", "first file\n"), (b"caf\xe8.txt", "second file\n")):  # not UTF-8 names
        with open(os.path.join(os.fsencode(root), raw), "w") as f:
            f.write(words)
    write(root / "Makefile", "all:\n\techo make\n")  # its text goes to text/c/Makefile.txt ...
    write(root / "Makefile.txt/notes.txt", "inside a folder named Makefile.txt\n")  # ... where this is a folder
    result = ingest([root], tmp_path / "out", workers=1)
    texts = {d.path: d.text for d in result.documents}
    assert sorted(texts.values()) == sorted(
        ["first file\n", "second file\n", "all:\n\techo make\n", "inside a folder named Makefile.txt\n"]
    )
    assert len({r.text_path for r in result.records}) == 4


def test_a_served_pool_keeps_its_worker_from_call_to_call(tmp_path):
    """Pool.serve (a Ray actor's loop): one worker, started once, reads file after file until close()."""
    from llm.data.worker import Pool

    write(tmp_path / "a.txt", "a")
    pool = Pool(1, Settings.from_mapping({}))
    try:
        first = [out["text"] for _, out in pool.serve([Task(0, str(tmp_path / "a.txt"), ingest_readers.pid)])]
        again = [out["text"] for _, out in pool.serve([Task(1, str(tmp_path / "a.txt"), ingest_readers.pid)] * 2)]
    finally:
        pool.close()
    assert first == again[:1] == again[1:] and int(first[0]) != os.getpid()
    assert not pool.workers
