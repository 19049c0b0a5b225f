"""Spreadsheets and e-books on a fresh machine: .xlsx through openpyxl, .epub, .odt and .rtf through the pandoc that
pypandoc-binary ships (none on PATH)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.ingest_fixtures import write

RTF = r"{\rtf1\ansi{\fonttbl\f0\fswiss Helvetica;}\f0\pard The rtf letter words.\par}"


def workbook(path: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Budget"
    sheet.append(["item", "qty", "price", "bought"])
    sheet.append(["apples", 3, 1.5, dt.datetime(2024, 3, 1)])
    sheet.append([])
    sheet.append(["pears", 2.0, None, None])
    book.create_sheet("Notes")["A1"] = "a cell\nwith a line break"
    book.save(path)


def test_spreadsheets_and_ebooks_read_ok_with_no_pandoc_on_path(tmp_path):
    import pypandoc

    root = tmp_path / "docs"
    root.mkdir()
    workbook(root / "budget.xlsx")
    pypandoc.convert_text(
        "# Chapter One\n\nThe epub story words.",
        "epub",
        format="md",
        outputfile=str(root / "book.epub"),
        extra_args=["--metadata", "title=A Book"],
    )
    pypandoc.convert_text("The odt report words.", "odt", format="md", outputfile=str(root / "report.odt"))
    write(root / "letter.rtf", RTF)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**os.environ, "PATH": str(empty_bin)}
    assert shutil.which("pandoc", path=env["PATH"]) is None
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "llm.ingest", str(root), "--out", str(out), "--workers", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    recs = {r["path"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    texts = {p: (out / r["text_path"]).read_text(encoding="utf-8") for p, r in recs.items() if r["status"] == "ok"}
    assert set(texts) == {"docs/budget.xlsx", "docs/book.epub", "docs/report.odt", "docs/letter.rtf"}, recs
    # a sheet's name, then its rows as lines of tab-separated values; empty rows and cells left out
    budget = "# Budget\nitem\tqty\tprice\tbought\napples\t3\t1.5\t2024-03-01\npears\t2\n"
    assert texts["docs/budget.xlsx"] == budget + "\n# Notes\na cell with a line break\n"
    assert recs["docs/budget.xlsx"]["strategy"] == "openpyxl"
    assert "The epub story words." in texts["docs/book.epub"]
    assert "The odt report words." in texts["docs/report.odt"]
    assert "The rtf letter words." in texts["docs/letter.rtf"]
