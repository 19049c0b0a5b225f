"""The docs stay true: worked examples equal the code's output, snippets run, links resolve, config is documented."""

from __future__ import annotations

import ast
import contextlib
import io
import math
import os
import re
import unicodedata
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from llm.checkpoint import save_model
from llm.config import model_preset
from llm.model import GPT, GPTConfig
from tools import explain
from tools.docs_examples import attention, embeddings, layers, training
from tools.docs_examples.tokenization import TOKENIZER_TEXT

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))
PLACEHOLDER_RE = re.compile(r"""["'][^"'\n]*<[A-Za-z_][\w-]*>[^"'\n]*["']""")  # "outputs/<run>/last.ckpt"
SNIPPET_RE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.M | re.S)
REQUIRED = [
    "attention.md",
    "embeddings.md",
    "tokenization.md",
    "layers.md",
    "training.md",
    "architecture.md",
    "configuration.md",
]
LINKED = [*REQUIRED, "generation.md", "data.md", "scaling.md"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {}


def _block_cases() -> list[tuple[str, str, str]]:
    return [(p.name, name, body) for p in DOC_FILES for name, body in explain.doc_blocks(p.read_text())]


@pytest.mark.parametrize(("doc", "name", "body"), _block_cases(), ids=lambda v: v if len(v) < 40 else "")
def test_worked_example_matches_code(doc: str, name: str, body: str, rendered: dict[str, str]) -> None:
    """Each <!-- explain:NAME --> block is exactly what `python -m tools.explain NAME` prints."""
    if name not in rendered:
        rendered[name] = explain.BLOCKS[name]()
    assert body == rendered[name] + "\n", (
        f"docs/{doc}: block {name!r} differs from the code; run `python -m tools.explain --write` "
        "after checking that the change is intended"
    )


def test_every_block_is_used_and_docs_exist() -> None:
    for name in REQUIRED:
        assert (DOCS / name).is_file(), f"docs/{name} is missing"
    used = {name for _, name, _ in _block_cases()}
    assert used == set(explain.BLOCKS), f"blocks never shown in docs: {set(explain.BLOCKS) - used}"


def test_docs_index_links_every_doc() -> None:
    index = (DOCS / "README.md").read_text()
    for name in sorted({*LINKED, *(p.name for p in DOC_FILES if p.name != "README.md")}):
        assert f"({name})" in index, f"docs/README.md does not link {name}"


def test_relative_links_and_images_resolve() -> None:
    for path in [ROOT / "README.md", *DOC_FILES]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).exists(), f"{path.name} links {target}, which does not exist"


FENCE_RE = re.compile(r"^ {0,3}(```|~~~)")
HEADING_RE = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
HTML_ANCHOR_RE = re.compile(r"""<a\s[^>]*?\b(?:id|name)\s*=\s*["']?([^"'\s>]+)""", re.I)
# [text](target) and [label]: target, the target a .md file with an #anchor or an #anchor of the same file
MD_LINK_RE = re.compile(r"\]\(\s*<?([^)\s>]*#[^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S*#\S*)")
CONF_LINK_RE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)#([\w-]+)")  # in a YAML comment


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a markdown file outside its fenced code blocks."""
    lines, fence = [], None
    for lineno, line in enumerate(text.splitlines(), 1):
        found = FENCE_RE.match(line)
        if found and (fence is None or found[1] == fence):
            fence = found[1] if fence is None else None
        elif fence is None:
            lines.append((lineno, line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text as rendered (no code backticks, a link's text, no HTML tags),
    lowercased, every character but letters, digits, marks, underscores, hyphens and spaces dropped, each space a
    hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    keep = ("L", "M", "Nd", "Nl", "Pc")
    text = "".join(c for c in text if c in " -" or unicodedata.category(c).startswith(keep))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link into this markdown file may name: its headings' slugs (a repeated one gets -1, -2, ...)
    and explicit <a id=...> / <a name=...> anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose_lines(path.read_text()):
        found.update(HTML_ANCHOR_RE.findall(line))
        heading = HEADING_RE.match(line)
        if heading:
            slug = github_slug(heading[2])
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _anchor_links() -> list[tuple[str, int, Path, str]]:
    """(where, line, target file, anchor) of every link to a heading: in README.md and docs/*.md (outside code, in
    prose and tables) and in the comments of conf/**/*.yaml (docs/training.md#anchor or training.md#anchor)."""
    links = []
    for path in [ROOT / "README.md", *DOC_FILES]:
        for lineno, line in _prose_lines(path.read_text()):
            line = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", line)  # inline code: not a link
            for found in MD_LINK_RE.finditer(line):
                target = found[1] or found[2]
                if "://" in target or target.startswith("mailto:"):
                    continue
                file, _, anchor = target.partition("#")
                if file and not file.endswith(".md"):
                    continue
                links.append((str(path.relative_to(ROOT)), lineno, path.parent / file if file else path, anchor))
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            _, hash_, comment = line.partition("#")
            for file, anchor in CONF_LINK_RE.findall(comment if hash_ else ""):
                target = ROOT / file if (ROOT / file).is_file() else DOCS / file
                links.append((str(path.relative_to(ROOT)), lineno, target, anchor))
    return links


def test_github_slug_rules() -> None:
    assert github_slug("The recipe, and what each choice gains") == "the-recipe-and-what-each-choice-gains"
    assert github_slug("`python -m llm.evaluate` (conf/evaluate.yaml)") == "python--m-llmevaluate-confevaluateyaml"
    assert github_slug("LoRA: fine-tune a few matrices") == "lora-fine-tune-a-few-matrices"
    assert github_slug("`__init__` and ReLU² in [a link](x.md)") == "__init__-and-relu-in-a-link"
    assert github_slug("Résumé — 2 × 3") == "résumé--2--3"


def test_caption_rules() -> None:
    assert CAPTION_DATE_RE.search("made 2025-01-31 at commit 1234567") and CAPTION_COMMIT_RE.search("commit 1234567")
    assert CAPTION_COMMIT_RE.search("(ef503cb)") and not CAPTION_COMMIT_RE.search("2,531,338 tokens, 2531338 bytes")
    assert not CAPTION_COMMIT_RE.search("a defaced facade") and not CAPTION_DATE_RE.search("300 steps x 2,048 tokens")


def test_anchors_of_a_file(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text('# Notes\n## Notes\n```bash\n# not a heading\n```\n## Notes\n<a id="here"></a>\n## Why? ##\n')
    assert anchors(doc) == {"notes", "notes-1", "notes-2", "here", "why"}


def test_anchor_link_forms() -> None:
    line = '[a](#x), [b](other.md#y "title"), [c](<../README.md#z>), [d](plain.md), [e](https://h.io/p#q)'
    assert [m[1] for m in MD_LINK_RE.finditer(line)] == ["#x", "other.md#y", "../README.md#z", "https://h.io/p#q"]
    assert MD_LINK_RE.search("[ref]: docs/a.md#w")[2] == "docs/a.md#w"
    comment = " mlp: relu2  # see docs/training.md#the-recipe or training.md#lr (and docs/data.md)"
    assert CONF_LINK_RE.findall(comment) == [("docs/training.md", "the-recipe"), ("training.md", "lr")]


def test_intra_doc_link_anchors_resolve() -> None:
    """Every link to file.md#anchor or #anchor (the docs, the README, the configs' comments) names an existing
    heading (GitHub's slug) or <a id>/<a name> anchor of that file."""
    links = _anchor_links()
    assert len(links) >= 20, links  # the parser still finds the docs' links
    known: dict[Path, set[str]] = {}
    dangling = []
    for where, lineno, target, anchor in links:
        target = target.resolve()
        if not target.is_file():
            continue  # test_relative_links_and_images_resolve reports a missing file
        if target not in known:
            known[target] = anchors(target)
        if anchor not in known[target]:
            dangling.append(f"{where}:{lineno} -> {target.relative_to(ROOT)}#{anchor}")
    assert not dangling, "links to headings that do not exist:\n" + "\n".join(dangling)


CAPTION_DATE_RE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
# "commit 1a2b3c4", or a bare sha: 7-40 hex digits with a letter and a digit (not a number, not a word)
CAPTION_COMMIT_RE = re.compile(
    r"\bcommit:?\s+[0-9a-f]{7,40}\b|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b", re.I
)


@pytest.mark.parametrize("png", sorted((DOCS / "images").glob("*.png")), ids=lambda p: p.name)
def test_every_figure_has_a_caption_with_date_and_commit(png: Path) -> None:
    """docs/images/X.png has docs/images/X.txt beside it that says when (YYYY-MM-DD) and from which commit (a 7-40
    hex sha, e.g. "commit 1a2b3c4") the figure was made."""
    caption = png.with_suffix(".txt")
    assert caption.is_file(), f"docs/images/{png.name} has no caption docs/images/{caption.name}"
    text = caption.read_text()
    missing = [
        what
        for what, rule in (("a date YYYY-MM-DD", CAPTION_DATE_RE), ("a commit sha", CAPTION_COMMIT_RE))
        if not rule.search(text)
    ]
    assert not missing, f"docs/images/{caption.name} lacks {' and '.join(missing)}"


def _imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth of the file (imports on use included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_package_never_imports_docs_tooling() -> None:
    """tools/ imports llm; llm imports neither tools nor the plotting library (wandb heatmaps are arrays)."""
    for path in sorted((ROOT / "llm").rglob("*.py")):
        imported = _imported_modules(path)
        bad = sorted(m for m in imported if m.split(".")[0] in ("tools", "matplotlib"))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    assert "llm.model" in _imported_modules(ROOT / "tools" / "docs_examples" / "attention.py")


# ---------------------------------------------------------------------------------------------- key facts


def test_softmax_of_two_scores() -> None:
    p = F.softmax(torch.tensor([0.5, 0.3]), dim=-1)
    assert [round(float(v), 2) for v in p] == [0.55, 0.45]


def test_attention_example_is_causal_and_normalised() -> None:
    ex = attention.attention_example()
    for h in range(2):
        w = ex[f"weights_{h}"]
        torch.testing.assert_close(w.sum(-1), torch.ones(3))
        assert torch.all(w.triu(diagonal=1) == 0), "a token attends to a later token"
        assert w[0, 0] == 1.0  # the first token can only look at itself
    # grouped-query: two query heads read the one K/V head
    gqa = attention.attention_example(n_kv_head=1)
    assert gqa["K"].shape == (3, 2) and gqa["Q"].shape == (3, 4)


def test_attention_maps_of_a_model_are_its_attention() -> None:
    """The heatmaps (tools.plots, wandb_extras) come from GPT.attention_weights: causal, normalised, per layer."""
    torch.manual_seed(0)
    model = GPT(model_preset("tiny", vocab_size=64, block_size=8, n_layer=2, n_head=2, n_kv_head=1, n_embd=16)).eval()
    with torch.no_grad():
        maps = model.attention_weights(torch.randint(0, 64, (1, 6)))
    assert len(maps) == 2 and maps[0].shape == (1, 2, 6, 6)
    for w in maps:
        torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 6))
        assert torch.all(w.triu(diagonal=1) == 0)
        torch.testing.assert_close(w[..., 0, :], torch.eye(6)[0].expand(1, 2, 6))  # the first token sees itself only


def test_norm_and_rope_facts() -> None:
    out = layers.render_norm()
    assert "0.3651, 0.7303, 1.0954, 1.4606" in out  # [1,2,3,4] / sqrt(7.5)
    assert "-1.3416, -0.4472, 0.4472, 1.3416" in out  # ([1,2,3,4] - 2.5) / sqrt(1.25)
    rows = [r for r in embeddings.render_rope().splitlines() if r.startswith("| ") and r[2].isdigit()]
    by_offset: dict[str, set[str]] = {}
    for r in rows:
        m, n, d, score = (c.strip() for c in r.strip("|").split("|"))
        by_offset.setdefault(d, set()).add(score)
    assert all(len(s) == 1 for s in by_offset.values()), f"rotary score depends on more than m - n: {by_offset}"


def test_initial_loss_is_log_vocab() -> None:
    assert f"| `tiny` | 2,048 | {math.log(2048):.3f} |" in training.render_loss()


# ---------------------------------------------------------------------------------------------- configuration


def _config_files() -> list[tuple[str, Path]]:
    conf = ROOT / "conf"
    files = [("", conf / "train.yaml")]
    defaults = OmegaConf.load(conf / "train.yaml").defaults
    for item in defaults:
        if OmegaConf.is_dict(item):
            ((group, choice),) = item.items()
            if choice is not None and (conf / group / f"{choice}.yaml").is_file():
                files.append((group, conf / group / f"{choice}.yaml"))
    return files


def _yaml_value(v: object) -> str:
    """A default as the configuration reference writes it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{}"
    return str(v)


def _flat(node: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in node.items():
        if k in ("defaults", "hydra", "_target_"):
            continue
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize(("group", "path"), _config_files(), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_configuration_reference_covers_every_key(group: str, path: Path) -> None:
    """Every key of conf/train.yaml and each group's default file is in docs/configuration.md."""
    doc = (DOCS / "configuration.md").read_text()
    doc = doc.split("\n## `infer.py`")[0]  # infer.py has its own seed and ckpt_path: tests/test_infer.py checks them
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    prefix = f"{group}." if group else ""  # group files sit under their group's name
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", doc, re.M))
    flat = _flat(cfg, prefix)
    missing = [k for k in flat if k not in rows]
    assert not missing, f"docs/configuration.md lacks {missing} (from {path.relative_to(ROOT)})"
    wrong = {k: (rows[k], _yaml_value(v)) for k, v in flat.items() if rows[k] != _yaml_value(v)}
    assert not wrong, f"docs/configuration.md shows stale defaults (doc, conf): {wrong}"


def test_configuration_groups_are_listed() -> None:
    doc = (DOCS / "configuration.md").read_text()
    for folder in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra"):
        for option in sorted(folder.glob("*.yaml")):
            assert f"`{folder.name}={option.stem}`" in doc, f"docs/configuration.md lacks {folder.name}={option.stem}"


# ---------------------------------------------------------------------------------------------- snippets


def _snippets() -> list[tuple[str, int, str]]:
    cases = []
    for path in [ROOT / "README.md", *DOC_FILES]:
        if not path.is_file():
            continue
        for i, m in enumerate(SNIPPET_RE.finditer(path.read_text())):
            if "skip" not in m[1]:  # ```python skip: shown, not run
                cases.append((path.name, i, m[2]))
    return cases


@pytest.fixture(scope="module")
def snippet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder like the repository's, whose outputs/ holds one small trained-shape checkpoint.

    Snippets that load "the last checkpoint" then run on a fresh clone too, where nothing was trained.
    """
    root = tmp_path_factory.mktemp("snippets")
    for entry in ROOT.iterdir():
        if entry.name not in ("outputs", ".git") and not entry.name.startswith("."):
            (root / entry.name).symlink_to(entry)
    _write_checkpoint(root / "outputs" / "train" / "run" / "checkpoints" / "last.ckpt")
    return root


def _snippet_id(value: object) -> str:
    """Test ids show the doc and block index, not the code."""
    if isinstance(value, str) and len(value) >= 40:
        return ""
    return str(value)


@pytest.mark.parametrize(("doc", "index", "code"), _snippets(), ids=_snippet_id)
def test_python_snippet_runs(
    doc: str, index: int, code: str, snippet_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ```python block in README.md and docs/*.md runs, from a copy of the repository root.

    Not run: blocks tagged ```python skip, and templates with a <placeholder> in a string (reported as skipped).
    """
    if PLACEHOLDER_RE.search(code):
        pytest.skip(f"{doc}: a template with a placeholder {PLACEHOLDER_RE.search(code)[0]}")
    monkeypatch.chdir(snippet_dir)
    monkeypatch.setitem(os.environ, "MPLBACKEND", "Agg")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"{doc}[python block {index}]", "exec"), {"__name__": "__snippet__"})


def _write_checkpoint(path: Path, cfg: GPTConfig | None = None) -> GPTConfig:
    """A checkpoint as train.py writes it (weights under net., model_config, tokenizer), untrained."""
    from llm.tokenizer import train_tokenizer

    if cfg is None:
        cfg = model_preset("tiny", vocab_size=300, block_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=16)
    tok = train_tokenizer([TOKENIZER_TEXT], vocab_size=cfg.vocab_size)
    torch.manual_seed(0)
    save_model(path, GPT(cfg), tok)
    return cfg


def test_attention_prose_numbers_match_the_example() -> None:
    """The hand calculations written in docs/attention.md's prose, recomputed."""
    doc = (DOCS / "attention.md").read_text()
    ex = attention.attention_example()
    r = lambda t: [round(float(v), 2) for v in t.flatten()]  # noqa: E731
    x, wq = ex["x"][0], ex["W_q"][0]
    assert r(x @ wq) == [-0.26] and "= −0.26." in doc
    assert r(ex["scores_0"][0, 0]) == [0.29] and "= 0.41 / 1.414 = 0.29" in doc
    assert r(ex["weights_0"][1, :2]) == [0.25, 0.75] and "= 0.25 and 0.75" in doc
    assert r(ex["weights_0"][2]) == [0.57, 0.24, 0.19] and "57 %" in doc and "24 %" in doc and "19 %" in doc
    assert r(ex["weights_1"][1, :2]) == [0.5, 0.5] and "splits its attention evenly" in doc
    assert r(ex["out_0"][2]) == [0.25, -0.40]
    by_hand = attention.weighted_sum_by_hand(h=0, query=2)
    assert by_hand.endswith("= [0.25, −0.40]") and by_hand in doc


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


@pytest.mark.parametrize("bpb", [True, False], ids=["with-val-bpb", "old-run-without-bpb"])
def test_plots_from_a_run_folder(tmp_path: Path, bpb: bool) -> None:
    """python -m tools.plots RUN_DIR writes every figure with its caption, from the files a run leaves."""
    pytest.importorskip("matplotlib")
    from tools import plots

    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    header = "epoch,lr,step,train/loss,train/tokens_per_sec,val/loss,val/ppl"
    rows = [f"0,{1e-3 * s / 40},{s},{6 - s / 20},{1000 + s},," for s in range(9, 40, 10)]
    last = "0,,39,,,5.5,244.7"
    if bpb:
        header += ",val/bpb"
        rows = [row + "," for row in rows]
        last += ",2.1"
    (run / "csv" / "metrics.csv").write_text("\n".join([header, *rows, last]) + "\n")
    cfg = _write_checkpoint(run / "checkpoints" / "last.ckpt")
    run_config = {
        "task_name": "t",
        "data": {"paths": [str(tmp_path)], "batch_size": 2},
        "model": {"config": cfg.to_dict()},
        "trainer": {"accumulate_grad_batches": 1},
    }
    OmegaConf.save(run_config, run / "config.yaml")
    out = tmp_path / "images"
    paths = plots.plot_run(run, out, hw="test CPU")
    assert sorted(p.name for p in paths) == ["t-attention.png", "t-loss.png", "t-lr.png", "t-throughput.png"]
    caption = (out / "t-loss.txt").read_text()
    assert "40 steps x 128 tokens" in caption and "test CPU" in caption and "2 layers x 16" in caption
    assert ("bits per byte" in caption) == bpb
    width, height = _png_size(out / "t-loss.png")
    assert width == 700 and height == (600 if bpb else 400)  # a second panel for val/bpb


def test_readme_gives_model_py_its_length() -> None:
    """The README says how long llm/model.py is, as `wc -l` counts it: the number must follow the file."""
    lines = (ROOT / "llm" / "model.py").read_text().count("\n")
    readme = (ROOT / "README.md").read_text()
    said = re.search(r"\[`llm/model\.py`\]\(llm/model\.py\), (\d+) lines \(`wc -l llm/model\.py`\)", readme)
    assert said and int(said.group(1)) == lines, (
        f"README.md gives llm/model.py {said and said.group(1)} lines; it has {lines}"
    )
