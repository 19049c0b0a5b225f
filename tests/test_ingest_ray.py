"""ingest.backend=ray gives the manifest the local pool gives (same paths, statuses, reasons and texts, hostile
files included), and its per-file time limit kills the worker and what it started."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from llm.data.formats import Format
from llm.data.pipeline import ingest
from llm.errors import ConfigError
from tests import ingest_readers
from tests.ingest_fixtures import hostile_corpus, needs_ocr, use_formats, write

ray = pytest.importorskip("ray")


def _manifest(out: Path) -> dict[str, tuple]:
    """path -> (status, reason, sha256 of the text) for every record."""
    rows = {}
    for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        text = (out / r["text_path"]).read_bytes() if r.get("text_path") else b""
        rows[r["path"]] = (r["status"], r.get("reason"), hashlib.sha256(text).hexdigest() if text else None)
    return rows


@needs_ocr
@pytest.mark.slow
def test_ray_backend_gives_the_local_manifest(tmp_path, monkeypatch):
    hostile_corpus(tmp_path / "in" / "hostile")
    local = ingest([tmp_path / "in"], tmp_path / "local", workers=2)
    use_formats(monkeypatch, Format("hang", ingest_readers.hang, version=1, extensions={".hang": None}))
    write(tmp_path / "slow" / "slow.hang", str(tmp_path / "child.pid"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = ingest([tmp_path / "in"], tmp_path / "ray", settings={"backend": "ray"}, workers=2)
        slow = ingest([tmp_path / "slow"], tmp_path / "slow-out", settings={"backend": "ray", "timeout_s": 2})
    finally:
        ray.shutdown()
    assert remote.extracted == local.extracted > 10  # both read every file: separate caches
    a, b = _manifest(tmp_path / "local"), _manifest(tmp_path / "ray")
    assert a == b
    assert a["in/hostile/png-named.pdf"][0] == "ok" and a["in/hostile/encrypted.pdf"][0] == "error"
    # the time limit holds on Ray: the worker is killed with what it started
    rec = slow.records[0]
    assert (rec.status, rec.reason) == ("error", "timed out after 2 s (ingest.timeout_s)")
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead


def test_unknown_backend_is_refused(tmp_path):
    write(tmp_path / "a.txt", "hello")
    with pytest.raises(ConfigError, match="data.ingest.backend='spark': choose one of"):
        ingest([tmp_path], tmp_path / "out", settings={"backend": "spark"})
