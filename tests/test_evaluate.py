"""Evaluation (llm/evaluate.py, llm/evaluation/): lm-eval's tasks through our adapter agree with the harness's own
Hugging Face backend on an exported checkpoint; bpb on a run's validation documents is its val/bpb; a missing
dataset stops the CLI in one line before the model loads; training writes results.json and report.md whose values
are metrics.csv's and results.json's. Offline: every task's data is written by the test."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported, here or by lm-eval
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from llm.checkpoint import load_checkpoint  # noqa: E402
from llm.config import config_dir  # noqa: E402
from llm.errors import ConfigError  # noqa: E402
from tests.conftest import compose_train  # noqa: E402

pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parent.parent
# experiment=exportable's keys and no QK-norm: the Llama layout, so format=hf exports it
EXPORTABLE = [
    "model.config.mlp=swiglu",
    "model.config.norm=rmsnorm",
    "model.config.value_embeds=0",
    "model.config.qk_norm=false",
]
WORDS = "the quick brown fox jumps over a lazy dog while seven small red birds sing in the old oak tree".split()


def write_corpus(root: Path) -> Path:
    """Prose and code: the validation split gets both kinds."""
    root.mkdir(parents=True)
    for i in range(10):
        text = " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(60 + 9 * i)).capitalize()
        (root / f"note{i}.txt").write_text(f"Note {i}. {text}.\n")
    for i in range(8):  # with data.seed 1337 and val_fraction 0.3, mod6.py and mod7.py are held out
        (root / f"mod{i}.py").write_text(f"def add{i}(a, b):\n    # adds two numbers\n    return a + b + {i}\n\n\n" * 5)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run of the exportable layout, trained as `python train.py` trains, with an evaluation every 2 steps."""
    from llm.train import train

    tmp = tmp_path_factory.mktemp("evaluate")
    corpus = write_corpus(tmp / "corpus")
    overrides = [*EXPORTABLE, "data.val_fraction=0.3", "trainer.max_steps=6", "callbacks.evaluate.every_n_steps=2"]
    train(compose_train(tmp, overrides, corpus))
    return tmp / "run"


def compose_evaluate(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose("evaluate", overrides=list(overrides))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def last_value(rows: list[dict], key: str) -> float:
    return [float(r[key]) for r in rows if r.get(key)][-1]


# ---------------------------------------------------------------------------------------------- bpb


def test_bpb_on_the_validation_documents_is_the_runs_val_bpb(run: Path) -> None:
    from llm.evaluate import evaluate

    cfg = compose_train(run.parent, corpus=None)
    windows = cfg.data.val_windows  # training scores this many windows
    results = evaluate(compose_evaluate(f"ckpt_path={run}", f"eval.windows={windows}"))
    rows = read_csv(run / "csv" / "metrics.csv")
    bpb = results["results"]["bpb"]
    assert abs(bpb["bpb,none"] - last_value(rows, "val/bpb")) < 1e-4
    assert abs(bpb["loss,none"] - last_value(rows, "val/loss")) < 1e-4
    scored = results["configs"]["bpb"]["scored"]
    assert {"bpb_code,none", "bpb_prose,none"} <= set(bpb)  # both kinds held out
    assert scored["documents"] == scored["documents_code"] + scored["documents_prose"]
    assert (
        min(bpb["bpb_code,none"], bpb["bpb_prose,none"])
        < bpb["bpb,none"]
        < max(bpb["bpb_code,none"], bpb["bpb_prose,none"])
    )
    # the run's loggers got it: a row of metrics.csv at the checkpoint's step
    assert abs(last_value(read_csv(run / "csv" / "metrics.csv"), "eval/bpb/bpb") - bpb["bpb,none"]) < 1e-9
    # all windows (the default) score every validation token once
    everything = evaluate(compose_evaluate(f"ckpt_path={run}", "report=false"))["configs"]["bpb"]["scored"]
    assert everything["tokens"] >= scored["tokens"] and everything["documents"] == scored["documents"]


def test_bpb_on_folders_is_by_kind(run: Path, tmp_path: Path) -> None:
    from llm.evaluate import evaluate

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.py").write_text("def f(x):\n    return x * 2\n" * 20)
    (folder / "b.py").write_text("class A:\n    pass\n" * 20)
    (folder / "c.md").write_text("A small note about foxes and dogs. " * 30)
    cfg = compose_evaluate(f"ckpt_path={run}", f"eval.paths=[{folder}]", f"out={tmp_path / 'out'}")
    cfg.paths.cache_dir = str(tmp_path / "cache")
    results = evaluate(cfg)
    scored = results["configs"]["bpb"]["scored"]
    assert (scored["documents_code"], scored["documents_prose"]) == (2, 1)
    assert (tmp_path / "out" / "results.json").is_file() and (tmp_path / "out" / "data" / "manifest.jsonl").is_file()


# ---------------------------------------------------------------------------------------------- parity with hf

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
"""


def write_tasks(folder: Path) -> list[str]:
    """A multiple-choice task, a rolling-loglikelihood task and a generation task, data and YAML."""
    folder.mkdir()
    choice = []
    for i in range(12):
        question = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(6 + 5 * (i % 4)))  # some longer than 32
        options = [" " + WORDS[(i * 7 + k) % len(WORDS)] + " " + WORDS[(i + k) % len(WORDS)] for k in range(4)]
        choice.append({"question": question.capitalize(), "choices": options, "answer": i % 4})
    rolling = [{"text": " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(12 + 23 * i))} for i in range(5)]
    generation = [{"question": f"def add{i}(a, b):\n", "answer": f"    return a + b + {i}"} for i in range(3)]
    tasks = {"toy_choice": choice, "toy_rolling": rolling, "toy_generation": generation}
    extra = {
        "toy_choice": "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: choices\n"
        "doc_to_target: answer\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        "toy_rolling": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
        "toy_generation": "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 12\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n",
    }
    for name, rows in tasks.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data) + extra[name])
    return list(tasks)


def per_document(samples: list[dict]) -> dict[int, list[float]]:
    """doc_id -> the log-likelihood of each request (each choice; the whole document)."""
    out = {}
    for s in samples:
        resps = s["filtered_resps"]
        values = [r[0] if isinstance(r, (list, tuple)) else r for r in resps]
        out[int(s["doc_id"])] = [float(v) for v in values]
    return out


def test_the_adapter_agrees_with_the_harness_hf_backend_on_an_export(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from llm.evaluate import evaluate
    from llm.export import export

    hf = export(run / "checkpoints" / "last.ckpt", "hf", tmp_path / "hf")
    folder = tmp_path / "tasks"
    names = write_tasks(folder)[:2]
    ours = tmp_path / "ours"
    evaluate(
        compose_evaluate(
            f"ckpt_path={run}",
            f"tasks=[{','.join(names)}]",
            f"include_path={folder}",
            f"out={ours}",
            "log_samples=true",
            "batch_size=5",
        )
    )
    theirs = simple_evaluate(  # what `lm_eval --model hf --model_args pretrained=<export> --include_path ...` runs
        model="hf",
        model_args={"pretrained": str(hf), "dtype": "float32"},
        tasks=names,
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        batch_size=3,
        device="cpu",
        log_samples=True,
    )
    results = json.loads((ours / "results.json").read_text())["results"]
    for metric in ("acc,none", "acc_norm,none"):
        assert results["toy_choice"][metric] == theirs["results"]["toy_choice"][metric]
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert results["toy_rolling"][metric] == pytest.approx(theirs["results"]["toy_rolling"][metric], rel=1e-5)
    for name in names:
        mine = per_document([json.loads(line) for line in (ours / f"samples_{name}.jsonl").read_text().splitlines()])
        ref = per_document(theirs["samples"][name])
        assert mine.keys() == ref.keys() and len(mine) > 4
        for doc_id, values in ref.items():
            assert mine[doc_id] == pytest.approx(values, abs=1e-4), (name, doc_id)
    assert len({round(v[0], 3) for v in per_document(theirs["samples"]["toy_rolling"]).values()}) == 5  # not all alike


def test_generate_until_is_the_samplers_greedy_text_up_to_the_stop_string(run: Path) -> None:
    from lm_eval.api.instance import Instance

    from llm.evaluation.adapter import GPTLM
    from llm.sampler import generate

    model, tok, _ = load_checkpoint(run / "checkpoints" / "last.ckpt")
    lm = GPTLM(model, tok, batch_size=2, max_gen_toks=16)
    contexts = ["def add1(a, b):\n", "Note 3. The", "def "]
    requests = [
        Instance("generate_until", {}, (c, {"until": ["\n", "("], "max_gen_toks": 10}), i)
        for i, c in enumerate(contexts)
    ]
    got = lm.generate_until(requests)
    want = [g.text for g in generate(model, tok, contexts, max_new_tokens=10, temperature=0, stop=["\n", "("])]
    assert got == want
    assert all("\n" not in g and "(" not in g for g in got)


def test_rolling_windows_with_a_stride_predict_every_token_once(run: Path) -> None:
    from lm_eval.api.instance import Instance

    from llm.evaluation.adapter import GPTLM

    model, tok, _ = load_checkpoint(run / "checkpoints" / "last.ckpt")
    text = " ".join(WORDS * 4)
    n = len(tok.encode(text).ids)
    for stride in (None, 8, 1):
        lm = GPTLM(model, tok, batch_size=4, max_gen_toks=16, stride=stride)
        seen = []
        score = lm._loglikelihood_tokens
        lm._loglikelihood_tokens = lambda reqs, seen=seen, score=score: seen.extend(reqs) or score(reqs)
        lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
        assert sum(len(cont) for _, _, cont in seen) == n  # every token predicted once
        assert all(len(ctx) + len(cont) - 1 <= model.config.block_size for _, ctx, cont in seen)
        if stride == 8:
            assert max(len(cont) for _, _, cont in seen[1:]) == 8
    with pytest.raises(ConfigError, match=r"stride=0 must be in \[1, 32\]"):
        GPTLM(model, tok, batch_size=4, max_gen_toks=16, stride=0)


def test_a_generation_task_runs_through_the_cli(run: Path, tmp_path: Path) -> None:
    from llm.evaluate import evaluate

    folder = tmp_path / "tasks"
    write_tasks(folder)
    out = tmp_path / "out"
    results = evaluate(
        compose_evaluate(f"ckpt_path={run}", "tasks=[toy_generation]", f"include_path={folder}", f"out={out}")
    )
    assert 0.0 <= results["results"]["toy_generation"]["exact_match,none"] <= 1.0
    assert json.loads((out / "results.json").read_text())["n-samples"]["toy_generation"]["effective"] == 3


# ---------------------------------------------------------------------------------------------- refusals


def test_a_missing_dataset_stops_in_one_line_with_exit_2_before_the_model_loads(tmp_path: Path) -> None:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path)}
    env["HF_HOME"] = str(tmp_path / "hf")  # nothing cached
    # the checkpoint does not exist: had it been looked for, the message would say so
    args = [sys.executable, "-m", "llm.evaluate", f"ckpt_path={tmp_path / 'none.ckpt'}", "tasks=[hellaswag]"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "tasks: hellaswag needs the dataset Rowan/hellaswag" in lines[0]
    assert "datasets.load_dataset('Rowan/hellaswag')" in lines[0] and "none.ckpt" not in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=0", "batch_size=0 must be a whole number, at least 1"),
        ("tasks=[]", "tasks=[] must be a non-empty list of task names"),
        ("eval.windows=0", "eval.windows=0 must be a whole number, at least 1, or null"),
        ("limit=-1", "limit=-1 must be a number of examples per task"),
        ("include_path=/no/such/folder", "include_path=/no/such/folder: no such folder"),
    ],
)
def test_bad_values_are_named(override: str, message: str) -> None:
    from llm.evaluate import evaluate

    extra = ["tasks=[toy]"] if override.startswith("include_path") else []
    with pytest.raises(ConfigError, match=re.escape(message)):
        evaluate(compose_evaluate("ckpt_path=/no/such.ckpt", override, *extra))


def test_a_local_task_whose_data_file_is_missing_is_named(tmp_path: Path) -> None:
    from llm.evaluation.suite import Plan

    folder = tmp_path / "tasks"
    write_tasks(folder)
    (folder / "toy_choice.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"tasks: toy_choice reads .*toy_choice\.jsonl, which does not exist"):
        Plan.make(["toy_choice"], str(folder), None, None, 4, 16, None, None, 0, False)


# ---------------------------------------------------------------------------------------------- training


def report_rows(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", text, re.M))


def test_training_writes_results_and_a_report_card_whose_values_are_the_runs(run: Path) -> None:
    rows = read_csv(run / "csv" / "metrics.csv")
    evaluated = sorted({int(float(r["step"])) for r in rows if r.get("eval/bpb/bpb")})
    assert evaluated[:3] == [2, 4, 6]  # every 2 steps and at the end (later rows: the CLI tests' own)
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["config"]["step"] >= 6 and "bpb,none" in results["results"]["bpb"]

    text = (run / "report.md").read_text()
    table = report_rows(text)
    model, _, ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert table["parameters"] == f"{model.num_params():,}"
    assert table["layout"].startswith("2 layers × 32, 2 heads (1 K/V), context 32")
    for key in ("val/loss", "val/ppl", "val/bpb"):
        assert table[key] == f"{last_value(rows, key):.4f}"
    compute = json.loads((run / "compute.json").read_text())
    assert compute["steps"] == 6 and compute["tokens"] == 6 * 4 * 32  # steps x batch x block
    assert table["tokens trained"] == f"{compute['tokens']:,}" and table["optimizer steps"] == "6"
    assert table["tokens/s"] != "—" and table["time"].endswith(" s") and table["hardware"].startswith("CPU")
    meta_folder = Path(json.loads((run / "data" / "dataset.json").read_text())["folder"])
    meta = json.loads((meta_folder / "meta.json").read_text())
    assert table["tokens"] == f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} held out"
    assert table["epochs seen"] == f"{compute['tokens'] / meta['train_tokens']:.2f}"
    n_docs = len(meta["train_docs"]) + len(meta["val_docs"])
    assert table["documents"].startswith(f"{n_docs:,} (")
    scores = re.findall(r"^\| bpb \| (\S+) \| (\S+) \| (\S+) \|$", text, re.M)
    written = {"bpb": results["results"]["bpb"]}
    assert scores and all(f"{written['bpb'][f'{m},none']:.4f}" == v and e == "—" for m, v, e in scores)
    for figure in ("loss.svg", "bpb.svg"):
        assert f"]({figure})" in text and (run / figure).read_text().count("<circle") >= 3  # a point per value
    assert "## Samples" in text and "```text\ndef " in text


def test_the_configuration_reference_lists_every_evaluate_key() -> None:
    from omegaconf import OmegaConf

    doc = (ROOT / "docs" / "configuration.md").read_text()
    section = doc.split("## `python -m llm.evaluate`")[1].split("\n## ")[0]
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", section, re.M))
    cfg = OmegaConf.load(config_dir() / "evaluate.yaml")
    flat = {}
    for key in cfg:
        if key in ("defaults", "hydra"):
            continue
        node = cfg[key]
        items = {f"{key}.{k}": node[k] for k in node} if OmegaConf.is_dict(node) else {key: node}
        flat |= items
    shown = {k: json.dumps(OmegaConf.to_object(v) if OmegaConf.is_config(v) else v) for k, v in flat.items()}
    shown = {k: v.replace('"', "").replace(", ", ",") for k, v in shown.items()}  # ["bpb"] -> [bpb], "last" -> last
    assert rows == shown


def test_a_continuation_longer_than_the_context_is_scored_in_pieces(run: Path) -> None:
    """The hf backend stops with an assertion there; the adapter scores every token, each piece after what fits."""
    from llm.evaluation.adapter import GPTLM

    model, tok, _ = load_checkpoint(run / "checkpoints" / "last.ckpt")
    lm = GPTLM(model, tok, batch_size=4, max_gen_toks=16)
    ids = tok.encode(" ".join(WORDS * 6)).ids
    L = model.config.block_size
    context, continuation = ids[:5], ids[5 : 5 + 2 * L + 7]
    (whole, _), *_ = lm._loglikelihood_tokens([(None, context, continuation)])
    parts = [
        lm._loglikelihood_tokens([(None, context + continuation[:a], continuation[a : a + L])])[0][0]
        for a in (0, L, 2 * L)
    ]
    assert whole == pytest.approx(sum(parts), abs=1e-4) and whole < 0
    short = lm._loglikelihood_tokens([(None, context, continuation[:L])])[0][0]
    assert short == pytest.approx(parts[0], abs=1e-5)  # a piece that fits is scored as before


def test_kinds_of_documents() -> None:
    from llm.evaluation.bpb import kind_of

    got = [kind_of(k, s) for k, s in [("code", "verbatim"), ("text", "verbatim"), ("html", "partition_html")]]
    got += [
        kind_of("pdf", "pdfium"),
        kind_of("pdf", "ocr_only"),
        kind_of("pdf", "pdfium+ocr_only"),
        kind_of("image", "ocr_only"),
    ]
    assert got == ["code", "prose", "prose", "pdf", "ocr", "ocr", "ocr"]
