"""One decode core behind every path: the same prompt, settings and seed give the same text through the Python
generate(), infer.py and the server, for greedy decoding and for sampling with each control."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm import infer
from llm.checkpoint import load_checkpoint
from llm.sampler import generate
from tests.serve_fixtures import served, write_checkpoint
from tests.test_infer import compose_infer

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

OFF = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
CONTROLS = {
    "greedy": dict(OFF, temperature=0.0),
    "temperature": dict(OFF, temperature=1.3),
    "top_k": dict(OFF, top_k=5),
    "top_p": dict(OFF, top_p=0.7),
    "min_p": dict(OFF, min_p=0.2),
    "repetition_penalty": dict(OFF, temperature=0.9, repetition_penalty=1.8),
}
PROMPT, NEW, SEED = "def add", 24, 21


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("paths") / "run" / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def server(checkpoint: Path):
    with served(checkpoint) as s:
        yield s


@pytest.mark.parametrize("control", CONTROLS)
def test_generate_infer_py_and_the_server_give_the_same_text(
    control: str, checkpoint: Path, server, capsys: pytest.CaptureFixture
) -> None:
    settings = CONTROLS[control]
    model, tokenizer, _ = load_checkpoint(checkpoint)
    python = generate(model, tokenizer, PROMPT, NEW, seed=SEED, **settings)[0]
    assert python.text

    overrides = [f"{key}={value}" for key, value in settings.items()]
    infer.infer(
        compose_infer(
            f"ckpt_path={checkpoint}", f"prompt={PROMPT!r}", f"max_new_tokens={NEW}", f"seed={SEED}", *overrides
        )
    )
    assert capsys.readouterr().out == PROMPT + python.text + "\n"

    body = {"model": "llm", "prompt": PROMPT, "max_tokens": NEW, "seed": SEED, **settings}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["text"] == python.text and choice["finish_reason"] == python.finish_reason


def test_the_controls_give_different_text(checkpoint: Path) -> None:
    """Else the test above could pass with every control ignored."""
    model, tokenizer, _ = load_checkpoint(checkpoint)
    texts = {name: generate(model, tokenizer, PROMPT, NEW, seed=SEED, **s)[0].text for name, s in CONTROLS.items()}
    assert len(set(texts.values())) == len(texts), texts


def test_the_server_runs_no_model_and_samples_nothing_itself() -> None:
    """llm/serve schedules; llm.sampler.core runs the model and samples. No forward, lm_head, softmax or draw here."""
    import ast

    forbidden = {"softmax", "log_softmax", "multinomial", "topk", "argmax", "exponential_", "lm_head", "forward"}
    found = []
    for path in sorted((Path(__file__).resolve().parent.parent / "llm" / "serve").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(node, ast.Attribute) and node.attr in forbidden:
                name = node.attr
            elif isinstance(node, ast.Call):
                func = node.func
                if (isinstance(func, ast.Name) and func.id in ("model", "net")) or (
                    isinstance(func, ast.Attribute) and func.attr in ("model", "net")
                ):
                    name = "a call of the model"
            if name:
                found.append(f"{path.name}:{node.lineno} {name}")
    assert found == []
