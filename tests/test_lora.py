"""LoRA (lora.r > 0): only the adapters train and are saved, the base stays bit for bit, the checkpoint names its base,
loading and export merge the adapters, a killed run resumes to the same adapters, finetune and sft both take it."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from llm.checkpoint import LORA, STATE_DICT, load_checkpoint, read_checkpoint, save_model, write_checkpoint
from llm.config import model_preset
from llm.errors import ConfigError
from llm.lora import A_SUFFIX, B_SUFFIX, LoraConfig, add_adapters, count_parameters, fingerprint, lora_config
from llm.model import GPT, GPTConfig
from llm.tokenizer import load_tokenizer
from llm.train import train
from llm.training.optim import build_optimizer, memory_estimate, optim_preset
from tests.conftest import compose_train
from tests.test_scale import ROOT, run_train

NO_EVAL = ["callbacks.evaluate.tasks=[]"]
# experiment=exportable's keys: with QK-norm the Qwen3 layout, so the merged model exports
EXPORTABLE = ["model.config.mlp=swiglu", "model.config.norm=rmsnorm", "model.config.value_embeds=0"]


class SaveParameters(L.Callback):
    """When training ends, save every parameter of the network (the frozen base's too) and whether it trained."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        named = pl_module.net.named_parameters(remove_duplicate=False)
        torch.save({n: (p.detach().clone(), p.requires_grad) for n, p in named}, self.path)


def _base_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    model, _, _ = load_checkpoint(ckpt)
    return model.state_dict()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model of ours trained 2 steps on a small corpus (Qwen3 layout): the base of every LoRA run here."""
    tmp = tmp_path_factory.mktemp("base")
    corpus = tmp / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"note{i}.txt").write_text(f"Note {i}. " + "The quick brown fox jumps over the lazy dog. " * (20 + i))
    cfg = compose_train(tmp, [*EXPORTABLE, f"data.paths=[{corpus}]", "trainer.max_steps=2", *NO_EVAL])
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def _corpus(base: Path) -> Path:
    return base.parents[2] / "corpus"  # the base fixture's: <tmp>/run/checkpoints/last.ckpt


def _lora_run(tmp_path: Path, base: Path, *overrides: str) -> Path:
    corpus = _corpus(base)
    record = tmp_path / "params.pt"
    cfg = compose_train(
        tmp_path,
        [
            *EXPORTABLE,
            "experiment=finetune",
            f"data.paths=[{corpus}]",
            f"init_from={base}",
            "lora.r=4",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "optim.lr=3e-2",  # large, so that 4 steps move B well away from 0
            "+callbacks.save._target_=tests.test_lora.SaveParameters",
            f"+callbacks.save.path={record}",
            *NO_EVAL,
            *overrides,
        ],
    )
    train(cfg)
    return Path(cfg.paths.output_dir)


def test_lora_keys_are_checked_by_name(tmp_path, base) -> None:
    with pytest.raises(ConfigError, match=r"^lora.targets=\['attn'\]: give a list of distinct names from \['attn.qkv'"):
        lora_config({"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["attn"]})
    with pytest.raises(ConfigError, match=r"^lora.r=-1 must be a whole number >= 0"):
        LoraConfig(r=-1, alpha=16, dropout=0.0, targets=["mlp.fc"])
    with pytest.raises(
        ConfigError, match=r"^lora has no key 'rank': its keys are \['r', 'alpha', 'dropout', 'targets'\]"
    ):
        lora_config({"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["mlp.fc"]})
    assert lora_config({"r": 2, "alpha": 4, "dropout": 0.0, "targets": "mlp.proj"}).targets == ["mlp.proj"]
    with pytest.raises(ConfigError, match=r"^lora.r=4 trains adapters on a frozen base: give init_from"):
        train(compose_train(tmp_path, ["lora.r=4"]))


def test_adapters_train_with_adamw_even_under_optim_muon_and_the_memory_is_estimated() -> None:
    config = model_preset(
        "tiny", vocab_size=320, block_size=16, n_layer=2, n_head=2, n_kv_head=1, n_embd=64, zero_init_proj=False
    )
    net = GPT(config)
    full = memory_estimate(net, optim_preset("muon"))
    add_adapters(net, LoraConfig(r=4, alpha=8, dropout=0.0, targets=["attn.qkv", "mlp.proj"]))
    opt = build_optimizer(net, optim_preset("muon"))
    assert type(opt) is torch.optim.AdamW
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    adapters = {id(p) for n, p in net.named_parameters() if "lora_" in n}
    assert trained == adapters and len(adapters) == 2 * 2 * 2  # A and B, 2 targets, 2 layers
    n_train, n_total = count_parameters(net)
    lora = memory_estimate(net, optim_preset("muon"))
    assert lora["gradients"] == 4 * n_train and lora["optimizer"] == 2 * 4 * n_train  # AdamW: two moments
    assert lora["weights"] == 4 * n_total and full["gradients"] == 4 * net.num_params() - 4 * n_train


def test_a_12_layer_model_trains_under_2_percent_and_its_base_stays_bit_identical(tmp_path, base) -> None:
    """lora.r=8 on a 12-layer model 768 wide (GPT-2 small's blocks): only the adapters change."""
    ckpt = read_checkpoint(base)
    shape = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_kv_head": 4, "mlp_hidden": None}  # SwiGLU: 2048
    config = GPTConfig(**{**ckpt["model_config"], **shape})
    big = _corpus(base).parent / "big" / "checkpoints" / "last.ckpt"  # beside the corpus, as _lora_run expects
    torch.manual_seed(0)
    # random weights: a base as far as LoRA cares; the small base's tokenizer: the same vocabulary
    save_model(big, GPT(config), load_tokenizer(ckpt["tokenizer"]))
    run = _lora_run(tmp_path / "run", big, "lora.r=8", "trainer.max_steps=2", "data.batch_size=2")
    after = torch.load(tmp_path / "run" / "params.pt", weights_only=True)
    trained = sum(p.numel() for p, grad in after.values() if grad)
    total = sum(p.numel() for n, (p, _) in after.items() if n != "lm_head.weight")  # tied: wte once
    assert 0 < trained < 0.02 * total, (trained, total)
    base_state = _base_weights(big)
    frozen = {n.replace(".base_layer", ""): p for n, (p, grad) in after.items() if not grad}
    assert frozen.keys() == base_state.keys()
    for name, weight in base_state.items():
        assert torch.equal(frozen[name], weight), name  # bit for bit
    assert {n for n, (_, grad) in after.items() if grad} == {
        n.removeprefix("net.") for n in read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    }  # the checkpoint holds the adapters and nothing else


def test_the_checkpoint_names_its_base_and_loading_merges_the_adapters(tmp_path, base, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="llm.train"):
        run = _lora_run(tmp_path, base)
    assert "trains 4,864 of 46,048 parameters (10.56%)" in caplog.text and "expected memory: weights" in caplog.text
    last = run / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(last)
    entry = ckpt[LORA]
    assert entry["base"]["path"] == str(base.resolve()) and entry["base"]["kind"] == "checkpoint"
    assert entry["base"]["sha256"] == fingerprint(_base_weights(base)) and entry["r"] == 4
    assert all(k.endswith((A_SUFFIX, B_SUFFIX)) for k in ckpt["state_dict"])
    assert last.stat().st_size < base.stat().st_size / 2  # no second copy of the base

    # the model as training computes it: the base with PEFT's layers, unmerged
    unmerged, tokenizer, _ = load_checkpoint(base)
    add_adapters(unmerged, lora_config({k: entry[k] for k in ("r", "alpha", "dropout", "targets")}))
    unmerged.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})  # strict
    merged, _, _ = load_checkpoint(last)
    x = torch.tensor([tokenizer.encode("The quick brown fox jumps").ids])
    with torch.no_grad():
        want, got, before = unmerged.eval()(x), merged(x), load_checkpoint(base)[0](x)
    assert (want - before).abs().max() > 1e-3  # the adapters changed the model
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_the_merged_export_gives_the_unmerged_models_logits_in_transformers(tmp_path, base) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from llm.export import export

    run = _lora_run(tmp_path, base)
    entry = read_checkpoint(run / "checkpoints" / "last.ckpt")[LORA]
    unmerged, tokenizer, _ = load_checkpoint(base)
    add_adapters(unmerged, lora_config({k: entry[k] for k in ("r", "alpha", "dropout", "targets")}))
    state = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    unmerged.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    folder = export(run, "hf", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    x = torch.tensor([tokenizer.encode("The quick brown fox jumps over").ids])
    with torch.no_grad():
        want = unmerged.eval()(x)[..., : hf.config.vocab_size]
        got = hf(x).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_resume_refuses_other_adapters_and_loading_refuses_a_changed_base(tmp_path, base) -> None:
    run = _lora_run(tmp_path / "a", base)
    again = [*EXPORTABLE, f"data.paths=[{_corpus(base)}]", f"init_from={base}", f"ckpt_path={run}", *NO_EVAL]
    with pytest.raises(ConfigError, match=r"^lora.r=8 but the checkpoint .* has 4: the adapters cannot change"):
        train(compose_train(tmp_path / "b", [*again, "lora.r=8"]))
    with pytest.raises(ConfigError, match=r"^lora.r=0 but the checkpoint .* trained LoRA adapters \(lora.r=4\)"):
        train(compose_train(tmp_path / "b", again))
    moved = tmp_path / "base-copy.ckpt"  # the base changes under the adapters: refused by its fingerprint
    ckpt = read_checkpoint(base)
    state = {k: v + 1 if k.endswith("norm.weight") else v for k, v in ckpt[STATE_DICT].items()}
    write_checkpoint({**ckpt, STATE_DICT: state}, moved)
    changed = {**read_checkpoint(run / "checkpoints" / "last.ckpt")}
    changed[LORA] = {**changed[LORA], "base": {**changed[LORA]["base"], "path": str(moved)}}
    write_checkpoint(changed, tmp_path / "changed.ckpt")
    with pytest.raises(ConfigError, match=r"holds LoRA adapters on init_from=.*, but the weights at .* are not the"):
        load_checkpoint(tmp_path / "changed.ckpt")
    moved.unlink()
    with pytest.raises(ConfigError, match=r"whose weights were at .*base-copy.ckpt: not there any more"):
        load_checkpoint(tmp_path / "changed.ckpt")


def test_sft_on_conversations_with_lora(tmp_path, base) -> None:
    from llm.checkpoint import read_chat_template

    chats = tmp_path / "chats.jsonl"
    turns = [{"role": "user", "content": "What is the code name?"}, {"role": "assistant", "content": "Red fox."}]
    chats.write_text("".join(json.dumps({"messages": turns}) + "\n" for _ in range(40)))
    sft = [*EXPORTABLE, "experiment=sft", f"init_from={base}", f"data.paths=[{chats}]", "lora.r=4", *NO_EVAL]
    cfg = compose_train(tmp_path, [*sft, "trainer.max_steps=2", "trainer.val_check_interval=1"])
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)[LORA]["base"]["sha256"] == fingerprint(_base_weights(base))
    assert read_chat_template(last).name == "chatml"
    model, _, _ = load_checkpoint(last)  # merged
    assert model.num_params() == load_checkpoint(base)[0].num_params()


@pytest.mark.slow
def test_sigkill_then_resume_with_lora_gives_bit_identical_adapters(tmp_path, base) -> None:
    corpus = _corpus(base)
    common = [
        *EXPORTABLE,
        f"init_from={base}",
        "lora.r=4",
        "lora.dropout=0.1",  # the adapters' dropout draws must resume too
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "callbacks.last.every_n_train_steps=2",
        "trainer.deterministic=true",
        *NO_EVAL,
    ]
    run_train([*common, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path, corpus)
    kill = ["+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=5"]
    killed = run_train([*common, f"hydra.run.dir={tmp_path / 'b'}", *kill], tmp_path, corpus, check=False)
    assert killed.returncode == -9
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LLM_TEST_KILL": "0"}
    cmd = [sys.executable, str(ROOT / "train.py"), f"ckpt_path={tmp_path / 'b'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    unbroken = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert unbroken.keys() == resumed.keys() and all("lora_" in k for k in unbroken)
    for name in unbroken:
        assert torch.equal(unbroken[name], resumed[name]), name
    assert any(unbroken[k].abs().sum() > 0 for k in unbroken if k.endswith(B_SUFFIX))  # B moved from 0


def test_finetune_a_hugging_face_qwen2_base_with_lora_then_resume_and_merge(tmp_path, base) -> None:
    """A random Qwen2 folder (Qwen2.5's layout: biases on q, k, v) as the base of experiment=finetune lora.r=4."""
    pytest.importorskip("transformers")
    from llm.interop.hf import load_pretrained
    from tests.test_interop import _random_hf, _save_base_tokenizer

    folder = tmp_path / "qwen2-random"
    _random_hf("qwen2", folder)
    _save_base_tokenizer("qwen2", folder)
    overrides = [f"init_from={folder}", "experiment=finetune", "lora.r=4", "trainer.max_steps=2", "optim.lr=1e-2"]
    overrides += ["trainer.val_check_interval=1", "data.block_size=32", *NO_EVAL]
    cfg = compose_train(tmp_path / "ft", overrides, _corpus(base))
    train(cfg)
    run = Path(cfg.paths.output_dir)
    entry = read_checkpoint(run / "checkpoints" / "last.ckpt")[LORA]
    assert entry["base"]["kind"] == "qwen2" and entry["base"]["path"] == str(folder.resolve())
    # resumed: the base read from the folder again, its fingerprint checked, the adapters from the checkpoint
    train(compose_train(tmp_path / "ft", [*overrides, "trainer.max_steps=3", f"ckpt_path={run}"], _corpus(base)))
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3
    unmerged = load_pretrained(str(folder))
    add_adapters(unmerged, lora_config({k: entry[k] for k in ("r", "alpha", "dropout", "targets")}))
    unmerged.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    merged, _, _ = load_checkpoint(run / "checkpoints" / "last.ckpt")
    x = torch.arange(1, 30)[None]
    with torch.no_grad():
        torch.testing.assert_close(merged(x), unmerged.eval()(x), atol=1e-5, rtol=0)
