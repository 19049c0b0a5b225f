"""infer.py: a checkpoint alone is enough; text to stdout, logs to stderr; clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from llm import infer
from llm.checkpoint import load_checkpoint, save_model
from llm.config import model_preset
from llm.errors import ConfigError
from llm.model import GPT
from llm.sampler import generate, read_stop
from llm.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint laid out as train.py writes it: model config, tokenizer JSON, `net.` state dict."""
    tok = train_tokenizer(["def add(a, b):\n    return a + b\n", "The quick brown fox jumps."] * 20, vocab_size=300)
    torch.manual_seed(0)
    switches = dict(qk_norm=False, zero_init_proj=False, logit_softcap=None, tie_embeddings=True)
    config = model_preset(
        "tiny",
        vocab_size=tok.get_vocab_size(),
        block_size=64,
        n_layer=2,
        n_head=2,
        n_kv_head=None,
        n_embd=32,
        mlp="swiglu",
        **switches,
    )
    model = GPT(config)
    return save_model(tmp_path_factory.mktemp("run") / "checkpoints" / "last.ckpt", model, tok)


def compose_infer(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("infer", overrides=list(overrides))


def test_prompt_streams_to_stdout(checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    infer.infer(compose_infer(f"ckpt_path={checkpoint}", "prompt=def", "max_new_tokens=12", "seed=0"))
    out = capsys.readouterr().out
    assert out.startswith("def") and out.endswith("\n") and len(out) > len("def\n")


def test_kv_cache_flag_gives_the_same_greedy_text(checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    texts = []
    for flag in ("true", "false"):
        cfg = compose_infer(f"ckpt_path={checkpoint}", "prompt=def", "max_new_tokens=20", "temperature=0")
        cfg.kv_cache = flag == "true"
        infer.infer(cfg)
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]


def test_prompt_file_runs_as_a_batch(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def add\n\nThe quick\n")
    infer.infer(compose_infer(f"ckpt_path={checkpoint}", f"prompt_file={prompts}", "max_new_tokens=8", "temperature=0"))
    out = capsys.readouterr().out
    assert out.startswith("def add") and "\nThe quick" in out


def test_last_finds_the_newest_checkpoint(checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    root = checkpoint.parent.parent.parent
    infer.infer(compose_infer("ckpt_path=last", f"paths.outputs_root={root}", "prompt=def", "max_new_tokens=4"))
    assert capsys.readouterr().out.startswith("def")


def test_interactive(checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    lines = iter(["def add\n", "\n", "x\n", "/reset\n", "The\n", "/quit\n"])
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"readline": lambda self: next(lines)})())
    seen: list[str] = []

    def spy(model, tokenizer, prompt, **kwargs):
        seen.append(prompt)
        return generate(model, tokenizer, prompt, **kwargs)

    monkeypatch.setattr(infer, "generate", spy)
    infer.infer(compose_infer(f"ckpt_path={checkpoint}", "interactive=true", "max_new_tokens=5", "temperature=0"))
    captured = capsys.readouterr()
    assert len(seen) == 3
    assert seen[1].startswith("def add\n") and seen[1].endswith("\nx\n")  # the conversation so far
    assert seen[2] == "The\n"  # after /reset
    assert captured.err.count("> ") == 6 and "> " not in captured.out


def test_interactive_chat_keeps_the_conversation(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """chat=true interactive=true: each line is the user's next message; the replies so far go with it."""
    lines = iter(["hello\n", "and then?\n", "/reset\n", "again\n", "/quit\n"])
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"readline": lambda self: next(lines)})())
    seen: list[list[dict]] = []

    def spy(model, tokenizer, prompts, **kwargs):
        seen.append([dict(m) for m in prompts[0]])
        assert kwargs["chat"].template.name == "plain"  # a checkpoint without a template: the plain transcript
        return generate(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(infer, "generate", spy)
    overrides = ["interactive=true", "chat=true", "max_new_tokens=5", "temperature=0", "stream=false"]
    infer.infer(compose_infer(f"ckpt_path={checkpoint}", *overrides))
    out = capsys.readouterr().out.splitlines()
    assert [[m["role"] for m in c] for c in seen] == [["user"], ["user", "assistant", "user"], ["user"]]
    assert seen[1][1]["content"] == out[0] and seen[1][2]["content"] == "and then?"  # its own reply went with it
    assert seen[2] == [{"role": "user", "content": "again"}]  # after /reset


def test_a_seeded_interactive_session_is_reproducible_and_its_turns_differ(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seed=7 seeds the session once: the same lines give the same session; the same line after /reset (the
    same transcript) gets another reply, as every turn draws on from where the last stopped."""

    def session() -> list[str]:
        lines = iter(["def add\n", "/reset\n", "def add\n", "x = 1\n", "/quit\n"])
        monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"readline": lambda self: next(lines)})())
        replies: list[str] = []

        def spy(model, tokenizer, prompt, **kwargs):
            results = generate(model, tokenizer, prompt, **kwargs)
            replies.append(results[0].text)
            return results

        monkeypatch.setattr(infer, "generate", spy)
        overrides = ["interactive=true", "seed=7", "temperature=1.0", "top_p=1.0", "max_new_tokens=8"]
        infer.infer(compose_infer(f"ckpt_path={checkpoint}", *overrides))
        return replies

    first = session()
    torch.manual_seed(123)  # whatever the process drew before, the session is the same
    assert session() == first
    assert len(first) == 3 and first[0] != first[1]  # the same transcript, "def add\n", a new reply


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["ckpt_path=/nowhere/x.ckpt"], ConfigError, "no such file"),
        (["ckpt_path=last", "paths.outputs_root=/nowhere"], ConfigError, "no last.ckpt"),
        (["prompt="], ConfigError, "prompt is empty"),
        (["prompt_file=/nowhere/prompts.txt"], ConfigError, "prompt_file=/nowhere/prompts.txt: no such file"),
        (["top_p=1.5"], ConfigError, "top_p=1.5 is outside (0, 1]"),
        (["temperature=-1"], ConfigError, "temperature=-1 is negative"),
        (["compile=maybe"], ConfigError, "compile='maybe'"),
        (["max_new_tokens=abc"], ConfigError, "max_new_tokens='abc' must be an integer"),
        (["seed=abc"], ConfigError, "seed='abc' must be an integer"),
        (["device=gpu"], ConfigError, "device='gpu' is not a device"),
        (["dtype=float8"], ConfigError, "dtype='float8' is not one of ['auto', 'float32'"),
        (["kv_cache=maybe"], ConfigError, "kv_cache='maybe' must be true or false"),
        (["stream=1"], ConfigError, "stream=1 must be true or false"),
        (["stream=maybe"], ConfigError, "stream='maybe' must be true or false"),
        (["interactive=maybe"], ConfigError, "interactive='maybe' must be true or false"),
    ],
)
def test_errors_name_the_problem(checkpoint: Path, overrides: list[str], error: type, message: str) -> None:
    with pytest.raises(error) as err:
        infer.infer(compose_infer(f"ckpt_path={checkpoint}", *overrides))
    assert message in str(err.value)


def test_stop_strings_from_the_command_line(checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    # Hydra keeps \n as two characters inside a quoted value; infer.py reads it as a newline
    cfg = compose_infer(r'stop=["\n\n", "a\tb", "C:\\x"]')
    assert read_stop(cfg.stop) == ["\n\n", "a\tb", "C:\\x"]
    assert read_stop(compose_infer("stop=ab").stop) == ["ab"]  # one string, not one stop per character
    # a prompt that Hydra reads as a number is still a prompt
    infer.infer(compose_infer(f"ckpt_path={checkpoint}", "prompt=0", "max_new_tokens=3", "temperature=0"))
    assert capsys.readouterr().out.startswith("0")


def test_checkpoint_of_a_compiled_wrapper_loads(checkpoint: Path, tmp_path: Path) -> None:
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"] = {k.replace("net.", "net._orig_mod.", 1): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "compiled.ckpt")
    model, _, _ = load_checkpoint(tmp_path / "compiled.ckpt")
    reference, _, _ = load_checkpoint(checkpoint)
    theirs = reference.state_dict()
    assert all(torch.equal(p, theirs[name]) for name, p in model.state_dict().items())


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        infer.infer(compose_infer(f"ckpt_path={bad}"))


def test_cli_text_on_stdout_logs_on_stderr(checkpoint: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "infer.py"), f"ckpt_path={checkpoint}", "prompt=def", "max_new_tokens=6"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("def") and "INFO" not in run.stdout
    assert "loaded" in run.stderr


def test_cli_bad_key_is_one_line_and_exit_code_2(checkpoint: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "infer.py"), f"ckpt_path={checkpoint}", "top_p=1.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "top_p=1.5 is outside (0, 1]" in lines[0]
    assert run.stdout == ""


def test_configuration_reference_covers_every_infer_key() -> None:
    """docs/configuration.md's infer.py section lists every key of conf/infer.yaml with its default."""
    import re

    from omegaconf import OmegaConf

    doc = (REPO / "docs" / "configuration.md").read_text()
    section = doc[doc.index("## `infer.py`") :]
    end = section.find("\n## ", 1)  # the next section, if any
    if end != -1:
        section = section[:end]
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", section, re.M))
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "infer.yaml"), resolve=False)
    flat = {}
    for key, value in cfg.items():
        if key in ("defaults", "hydra"):
            continue
        flat.update({f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value})

    def written(v: object) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list):
            return "[" + ", ".join(written(x) for x in v) + "]"
        return str(v)

    assert sorted(rows) == sorted(flat), "docs/configuration.md's infer.py section and conf/infer.yaml differ"
    wrong = {k: (rows[k], written(v)) for k, v in flat.items() if rows[k] != written(v)}
    assert not wrong, f"stale defaults (doc, conf): {wrong}"
