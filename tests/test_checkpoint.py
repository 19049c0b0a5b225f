"""The checkpoint format (llm/checkpoint.py): what training writes is what every reader reads back."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from llm.checkpoint import (
    CONFIG,
    MODEL_CONFIG,
    TOKENIZER,
    WANDB_RUN_ID,
    add_entries,
    find_checkpoint,
    load_checkpoint,
    read_checkpoint,
    read_resume_state,
    run_folder,
    write_checkpoint,
)
from llm.config import model_preset
from llm.errors import ConfigError
from llm.loading import load
from llm.model import GPT
from llm.tokenizer import train_tokenizer
from llm.training.module import LitGPT

RUN_CONFIG = "seed: 7\nmodel:\n  config:\n    n_layer: 2\n"


@pytest.fixture(scope="module")
def parts():
    """A tiny network and tokenizer, as a run has them when it saves."""
    tok = train_tokenizer(["def add(a, b):\n    return a + b\n", "The quick brown fox jumps."] * 20, vocab_size=300)
    torch.manual_seed(0)
    config = model_preset("tiny", vocab_size=tok.get_vocab_size(), block_size=32, n_layer=2, n_head=2, n_embd=32)
    return GPT(config), tok


def lightning_dict(net: GPT, step: int = 7) -> dict:
    """The part of a checkpoint Lightning writes itself: the module's weights under net., the step."""
    return {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "global_step": step}


def saved_by_the_module(net: GPT, tok, run_config: str | None) -> dict:
    """The dict LitGPT.on_save_checkpoint leaves, with the tokenizer its datamodule built."""
    module = LitGPT(net, None, compile=False, seed=0)
    module.run_config = run_config
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=tok))
    checkpoint = lightning_dict(net)
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def test_what_training_writes_loads_back(parts, tmp_path: Path) -> None:
    net, tok = parts
    checkpoint = saved_by_the_module(net, tok, RUN_CONFIG)
    entries = add_entries({}, net.config, tok, RUN_CONFIG)  # one writer: what the module adds is add_entries'
    assert {k: v for k, v in checkpoint.items() if k not in ("state_dict", "global_step")} == entries
    assert checkpoint[MODEL_CONFIG] == net.config.to_dict() and checkpoint[CONFIG] == RUN_CONFIG
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    write_checkpoint(checkpoint, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left beside it

    model, tokenizer, raw = load_checkpoint(path)
    assert not model.training and model.config == net.config
    theirs = net.state_dict()
    assert all(torch.equal(p, theirs[name]) for name, p in model.state_dict().items())
    assert tokenizer.to_str() == tok.to_str() == raw[TOKENIZER]
    assert tokenizer.encode("<|endoftext|>").ids != [tok.token_to_id("<|endoftext|>")]  # text, not the token
    assert raw[CONFIG] == RUN_CONFIG
    assert read_resume_state(path) == (7, None)
    write_checkpoint({**checkpoint, WANDB_RUN_ID: "abc123"}, path)  # what llm/training/wandb_extras.py adds
    assert read_resume_state(path).wandb_run_id == "abc123"


def test_entries_training_does_not_have_are_left_out(parts) -> None:
    net, _ = parts
    checkpoint = add_entries({}, net.config, None, None)  # no datamodule tokenizer, no run config
    assert checkpoint == {MODEL_CONFIG: net.config.to_dict()}


def test_a_checkpoint_without_the_entries_is_refused(parts, tmp_path: Path) -> None:
    net, tok = parts
    write_checkpoint(lightning_dict(net), tmp_path / "bare.ckpt")
    with pytest.raises(ConfigError, match=r"lacks \['model_config', 'tokenizer'\]: was it written by train.py"):
        read_checkpoint(tmp_path / "bare.ckpt")


def test_the_run_folder_of_either_layout(tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "train" / "2026-01-01_00-00-00-000000"
    assert run_folder(run / "checkpoints" / "last.ckpt") == run
    assert run_folder(run / "checkpoints" / "best-step8.ckpt") == run
    assert run_folder(run / "last.ckpt") == run  # a checkpoint beside the run's files
    assert run_folder(str(tmp_path / "elsewhere" / "model.ckpt")) == tmp_path / "elsewhere"


def test_load_gives_the_model_on_the_device_in_the_dtype(parts, tmp_path: Path) -> None:
    net, tok = parts
    write_checkpoint(saved_by_the_module(net, tok, None), tmp_path / "run" / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.create(
        {"ckpt_path": str(tmp_path / "run"), "paths": {"outputs_root": "nowhere"}, "device": "cpu", "dtype": "bfloat16"}
    )
    model, tokenizer, device, template = load(cfg)
    assert device == torch.device("cpu") and next(model.parameters()).dtype == torch.bfloat16
    assert template.name == "plain"  # a base that was never fine-tuned on conversations
    assert tokenizer.to_str() == tok.to_str()
    assert find_checkpoint("last", tmp_path) == tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="dtype='float8'"):
        load(OmegaConf.merge(cfg, {"dtype": "float8"}))


def test_a_checkpoint_of_another_model_version_is_refused_by_name(parts, tmp_path: Path) -> None:
    """A config key this version does not know, a renamed weight, a weight of another shape: one clear line each."""
    net, tok = parts
    good = saved_by_the_module(net, tok, None)
    cases = {
        "unknown": ({**good, MODEL_CONFIG: {**good[MODEL_CONFIG], "n_layers": 2}}, r"does not know: \['n_layers'\]"),
        "renamed": (
            {**good, "state_dict": {k.replace("wte", "tok_emb"): v for k, v in good["state_dict"].items()}},
            r"weights do not match .*missing \['wte.weight'\]",
        ),
        "reshaped": (
            {**good, "state_dict": {k: (v[:-1] if "wte" in k else v) for k, v in good["state_dict"].items()}},
            r"weights do not match .*size mismatch",
        ),
    }
    for name, (checkpoint, message) in cases.items():
        path = tmp_path / f"{name}.ckpt"
        write_checkpoint(checkpoint, path)
        with pytest.raises(ConfigError, match=rf"ckpt_path={path}: .*{message}"):
            load_checkpoint(path)
