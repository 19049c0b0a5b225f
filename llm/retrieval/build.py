"""Where indexes are made: beside every run's extracted text, and by `python -m llm.index` without training.

The index of a corpus is kept up to date in the cache (one per set of input paths) and copied into the run folder,
so a run on a corpus with one file changed re-indexes that file alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llm.retrieval.index import FILE, Index

if TYPE_CHECKING:
    from llm.data.document import Document

log = logging.getLogger(__name__)


def cached_index(paths: Sequence[str | Path], cache_dir: str | Path) -> Path:
    """The cache's index of the corpus under these input paths."""
    key = hashlib.sha256(json.dumps(sorted(str(Path(p).resolve()) for p in paths)).encode()).hexdigest()[:16]
    return Path(cache_dir) / "index" / f"{key}.sqlite"


def write_index(
    docs: Sequence[Document], paths: Sequence[str | Path], cache_dir: str | Path, out_dir: str | Path
) -> Path:
    """Bring the cached index of this corpus up to date with docs, and copy it to out_dir/index.sqlite."""
    start = time.perf_counter()
    with Index(cached_index(paths, cache_dir), create=True) as index:
        counts = index.update(docs)
        target = index.copy_to(Path(out_dir) / FILE)
    log.info(
        "index: %d passages of %d documents (%d new, %d changed, %d removed) in %.1f s -> %s",
        counts["passages"],
        len(docs),
        counts["added"],
        counts["changed"],
        counts["removed"],
        time.perf_counter() - start,
        target,
    )
    return target
