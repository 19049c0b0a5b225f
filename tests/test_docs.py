"""The docs stay true: worked examples equal the code's output, snippets run, links resolve, config is documented."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from llm import explain
from llm.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))
PLACEHOLDER_RE = re.compile(r"""["'][^"'\n]*<[A-Za-z_][\w-]*>[^"'\n]*["']""")  # "outputs/<run>/last.ckpt"
SNIPPET_RE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.M | re.S)
REQUIRED = ["attention.md", "embeddings.md", "tokenization.md", "layers.md", "training.md", "architecture.md",
            "configuration.md"]  # fmt: skip
LINKED = [*REQUIRED, "generation.md", "data.md", "scaling.md"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {}


def _block_cases() -> list[tuple[str, str, str]]:
    return [(p.name, name, body) for p in DOC_FILES for name, body in explain.doc_blocks(p.read_text())]


@pytest.mark.parametrize(("doc", "name", "body"), _block_cases(), ids=lambda v: v if len(v) < 40 else "")
def test_worked_example_matches_code(doc: str, name: str, body: str, rendered: dict[str, str]) -> None:
    """Each <!-- explain:NAME --> block is exactly what `python -m llm.explain NAME` prints."""
    if name not in rendered:
        rendered[name] = explain.BLOCKS[name]()
    assert body == rendered[name] + "\n", (
        f"docs/{doc}: block {name!r} differs from the code; run `python -m llm.explain --write` "
        "after checking that the change is intended"
    )


def test_every_block_is_used_and_docs_exist() -> None:
    for name in REQUIRED:
        assert (DOCS / name).is_file(), f"docs/{name} is missing"
    used = {name for _, name, _ in _block_cases()}
    assert used == set(explain.BLOCKS), f"blocks never shown in docs: {set(explain.BLOCKS) - used}"


def test_docs_index_links_every_doc() -> None:
    index = (DOCS / "README.md").read_text()
    for name in LINKED:
        assert f"({name})" in index, f"docs/README.md does not link {name}"


def test_relative_links_and_images_resolve() -> None:
    for path in [ROOT / "README.md", *DOC_FILES]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if path.parent == DOCS and target in ("generation.md", "data.md", "scaling.md", "benchmarks.md"):
                continue  # written alongside; linked before they land
            assert (path.parent / target).exists(), f"{path.name} links {target}, which does not exist"


# ---------------------------------------------------------------------------------------------- key facts


def test_softmax_of_two_scores() -> None:
    p = F.softmax(torch.tensor([0.5, 0.3]), dim=-1)
    assert [round(float(v), 2) for v in p] == [0.55, 0.45]


def test_attention_example_is_causal_and_normalised() -> None:
    ex = explain.attention_example()
    for h in range(2):
        w = ex[f"weights_{h}"]
        torch.testing.assert_close(w.sum(-1), torch.ones(3))
        assert torch.all(w.triu(diagonal=1) == 0), "a token attends to a later token"
        assert w[0, 0] == 1.0  # the first token can only look at itself
    # grouped-query: two query heads read the one K/V head
    gqa = explain.attention_example(n_kv_head=1)
    assert gqa["K"].shape == (3, 2) and gqa["Q"].shape == (3, 4)


def test_attention_maps_of_a_model_are_its_attention() -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_kv_head=1, n_embd=16, **explain.SWITCHES_OFF)
    model = GPT(config).eval()
    maps = explain.attention_maps(model, torch.randint(0, 64, (1, 6)))
    assert len(maps) == 2 and maps[0].shape == (2, 6, 6)
    for w in maps:
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 6))
        assert torch.all(w.triu(diagonal=1) == 0)


def test_norm_and_rope_facts() -> None:
    out = explain.render_norm()
    assert "0.3651, 0.7303, 1.0954, 1.4606" in out  # [1,2,3,4] / sqrt(7.5)
    assert "-1.3416, -0.4472, 0.4472, 1.3416" in out  # ([1,2,3,4] - 2.5) / sqrt(1.25)
    rows = [r for r in explain.render_rope().splitlines() if r.startswith("| ") and r[2].isdigit()]
    by_offset: dict[str, set[str]] = {}
    for r in rows:
        m, n, d, score = (c.strip() for c in r.strip("|").split("|"))
        by_offset.setdefault(d, set()).add(score)
    assert all(len(s) == 1 for s in by_offset.values()), f"rotary score depends on more than m - n: {by_offset}"


def test_initial_loss_is_log_vocab() -> None:
    assert f"| `tiny` | 2,048 | {math.log(2048):.3f} |" in explain.render_loss()


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


@pytest.mark.parametrize(("doc", "index", "code"), _snippets(), ids=lambda v: str(v) if not isinstance(v, str) or
                         len(v) < 40 else "")  # fmt: skip
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

    cfg = cfg or GPTConfig(
        vocab_size=300, block_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=16, **explain.SWITCHES_OFF
    )
    tok = train_tokenizer([explain.TOKENIZER_TEXT], vocab_size=cfg.vocab_size)
    torch.manual_seed(0)
    state = {f"net.{k}": v for k, v in GPT(cfg).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "model_config": cfg.to_dict(), "tokenizer": tok.to_str()}, path)
    return cfg


def test_attention_prose_numbers_match_the_example() -> None:
    """The hand calculations written in docs/attention.md's prose, recomputed."""
    doc = (DOCS / "attention.md").read_text()
    ex = explain.attention_example()
    r = lambda t: [round(float(v), 2) for v in t.flatten()]  # noqa: E731
    x, wq = ex["x"][0], ex["W_q"][0]
    assert r(x @ wq) == [-0.26] and "= −0.26." in doc
    assert r(ex["scores_0"][0, 0]) == [0.29] and "= 0.41 / 1.414 = 0.29" in doc
    assert r(ex["weights_0"][1, :2]) == [0.25, 0.75] and "= 0.25 and 0.75" in doc
    assert r(ex["weights_0"][2]) == [0.57, 0.24, 0.19] and "57 %" in doc and "24 %" in doc and "19 %" in doc
    assert r(ex["weights_1"][1, :2]) == [0.5, 0.5] and "splits its attention evenly" in doc


def test_plots_from_a_run_folder(tmp_path: Path) -> None:
    """python -m llm.plots RUN_DIR writes every figure with its caption, from the files a run leaves."""
    pytest.importorskip("matplotlib")
    from llm import plots

    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    rows = ["epoch,lr,step,train/loss,train/tokens_per_sec,val/loss,val/ppl"]
    rows += [f"0,{1e-3 * s / 40},{s},{6 - s / 20},{1000 + s},," for s in range(9, 40, 10)]
    rows += ["0,,39,,,5.5,244.7"]
    (run / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    cfg = _write_checkpoint(run / "checkpoints" / "last.ckpt")
    OmegaConf.save({"task_name": "t", "data": {"paths": [str(tmp_path)], "batch_size": 2},
                    "model": {"config": cfg.to_dict()}, "trainer": {"accumulate_grad_batches": 1}},
                   run / "config.yaml")  # fmt: skip
    out = tmp_path / "images"
    paths = plots.plot_run(run, out, hw="test CPU")
    assert sorted(p.name for p in paths) == ["t-attention.png", "t-loss.png", "t-lr.png", "t-throughput.png"]
    caption = (out / "t-loss.txt").read_text()
    assert "40 steps x 128 tokens" in caption and "test CPU" in caption and "2 layers x 16" in caption
