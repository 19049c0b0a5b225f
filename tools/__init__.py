"""Docs tooling: the worked examples printed into docs/*.md and the figures in docs/images.

Run from the repository root (`python -m tools.explain`, `python -m tools.plots RUN_DIR`). These modules
import the `llm` package; the package never imports them.
"""
