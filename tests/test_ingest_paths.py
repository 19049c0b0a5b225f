"""data.paths and the CLI's inputs: one path or a list, with ~, $VARS and glob patterns, checked before any work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.utils import instantiate

from llm.data.discover import expand_paths
from llm.errors import ConfigError
from llm.ingest import main
from tests.conftest import compose_train, make_datamodule
from tests.ingest_fixtures import write


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME holding notes/ and papers/ (two .md files and a .txt in a subfolder)."""
    home = tmp_path / "home"
    write(home / "notes/todo.txt", "milk\n")
    write(home / "papers/b.md", "second\n")
    write(home / "papers/a.md", "first\n")
    write(home / "papers/old/c.md", "third\n")
    monkeypatch.setenv("HOME", str(home))
    return home


def test_one_path_as_a_string(home):
    assert expand_paths(str(home / "notes")) == [home / "notes"]


def test_a_list_keeps_its_order(home):
    assert expand_paths([str(home / "papers"), home / "notes"]) == [home / "papers", home / "notes"]


def test_tilde_is_the_home_folder(home):
    assert expand_paths(["~/notes", "~/papers"]) == [home / "notes", home / "papers"]


def test_variables_with_and_without_braces(home, monkeypatch):
    monkeypatch.setenv("CORPUS", "papers")
    assert expand_paths(["$HOME/notes", "${HOME}/$CORPUS"]) == [home / "notes", home / "papers"]


def test_glob_patterns_expand_sorted(home):
    assert expand_paths("~/papers/*.md") == [home / "papers/a.md", home / "papers/b.md"]
    assert expand_paths("$HOME/papers/**/*.md") == [
        home / "papers/a.md",
        home / "papers/b.md",
        home / "papers/old/c.md",
    ]
    assert expand_paths("~/[np]*") == [home / "notes", home / "papers"]


def test_an_existing_path_is_taken_as_it_is_even_with_glob_characters(tmp_path):
    odd = write(tmp_path / "draft [v2].txt", "words\n")
    assert expand_paths(str(odd)) == [odd]


def test_a_missing_path_is_one_line_naming_the_key_and_the_path(home):
    with pytest.raises(
        ConfigError, match=rf"^data\.paths: ~/nowhere \({re.escape(str(home))}/nowhere\) does not exist$"
    ):
        expand_paths(["~/notes", "~/nowhere"])
    with pytest.raises(ConfigError, match=r"^data\.paths: ~/papers/\*\.pdf \(.*\) matches nothing$"):
        expand_paths("~/papers/*.pdf")


def test_an_unset_variable_is_named(home, monkeypatch):
    monkeypatch.delenv("NO_SUCH_FOLDER_VAR", raising=False)
    with pytest.raises(
        ConfigError, match=r"^INPUT: \$NO_SUCH_FOLDER_VAR/x does not exist \(not set: \$NO_SUCH_FOLDER_VAR\)$"
    ):
        expand_paths("$NO_SUCH_FOLDER_VAR/x", key="INPUT")


@pytest.mark.parametrize("empty", [[], None, ""])
def test_no_path_at_all_is_refused(empty):
    with pytest.raises(ConfigError, match=r"^data\.paths is empty"):
        expand_paths(empty)


def test_the_datamodule_refuses_a_missing_path_before_any_work(tmp_path, home):
    with pytest.raises(ConfigError, match=r"^data\.paths: ~/nowhere .* does not exist$"):
        make_datamodule(tmp_path, "~/nowhere")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.paths=$HOME/notes", ["notes"]),  # what zsh passes for data.paths=$HOME/notes, and '...' in bash
        ("data.paths=[$HOME/papers,$HOME/notes]", ["papers", "notes"]),
        ('data.paths=["~/papers","~/notes"]', ["papers", "notes"]),
        ('data.paths="~/papers/*.md"', ["papers/a.md", "papers/b.md"]),
        ("data.paths=$HOME/papers/**/*.md", ["papers/a.md", "papers/b.md", "papers/old/c.md"]),
    ],
)
def test_the_forms_the_docs_show_compose_and_instantiate(tmp_path, home, override, expected):
    cfg = compose_train(tmp_path, [override])
    assert instantiate(cfg.data).paths == [str(home / p) for p in expected]


def test_the_cli_expands_its_inputs_and_names_a_missing_one(tmp_path, home, capsys):
    assert main(["~/notes", "$HOME/papers/*.md", "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    manifest = (tmp_path / "out/manifest.jsonl").read_text(encoding="utf-8")
    assert '"notes/todo.txt"' in manifest and '"a.md"' in manifest and '"b.md"' in manifest
    assert main(["~/nowhere", "--out", str(tmp_path / "out2")]) == 2
    assert capsys.readouterr().err == f"error: INPUT: ~/nowhere ({home}/nowhere) does not exist\n"
