"""`python -m llm.index 'data.paths=[...]' out=DIR`: the full-text index of a corpus's passages, without training.

Reads the files as training does (the same readers, settings and cache), cuts their text into passages and writes
DIR/index.sqlite, DIR/manifest.jsonl and DIR/text/. Run again, it reads and indexes only what changed, and drops
what is gone. Ask with `python infer.py chat=true retrieval.index=DIR ...` or `python serve.py retrieval.index=DIR`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from llm.config import run_command
from llm.data.discover import DEFAULT_EXCLUDE, expand_paths
from llm.data.pipeline import ingest
from llm.errors import ConfigError
from llm.retrieval.build import write_index

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> Path:
    """Ingest cfg.data.paths into cfg.out and index their passages: the index file."""
    paths = expand_paths(cfg.data.paths, key="data.paths")
    out = Path(cfg.out)
    settings = OmegaConf.to_container(cfg.data.ingest, resolve=True)
    exclude = tuple(cfg.data.get("exclude") or DEFAULT_EXCLUDE)
    result = ingest(paths, out, exclude, settings=settings, cache_dir=Path(cfg.paths.cache_dir) / "ingest")
    if not result.documents:
        raise ConfigError(f"data.paths: no usable document under {[str(p) for p in paths]}: see {out}/manifest.jsonl")
    return write_index(result.documents, paths, cfg.paths.cache_dir, out)


def main() -> None:
    run_command("index", lambda cfg: print(build(cfg)))


if __name__ == "__main__":
    main()
