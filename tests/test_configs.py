"""Every YAML under conf/ composes, and every group option instantiates."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from llm.checkpoint import save_model
from llm.errors import ConfigError
from llm.model import GPT, Block, GPTConfig
from llm.tokenizer import train_tokenizer
from llm.training.precision import resolve_precision
from tests.conftest import CONF_DIR, compose_train

GROUPS = ["model", "data", "trainer", "logger", "callbacks", "debug", "experiment", "hparams_search", "sweep"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONF_DIR) / g).glob("*.yaml"))]


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert {"tiny", "small", "gpt2-124m"} <= {o for g, o in OPTIONS if g == "model"}
    assert {"cpu", "gpu"} <= {o for g, o in OPTIONS if g == "trainer"}
    assert {"csv", "tensorboard", "wandb"} <= {o for g, o in OPTIONS if g == "logger"}
    assert {"fdr", "overfit"} <= {o for g, o in OPTIONS if g == "debug"}


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(tmp_path, group, option):
    cfg = compose_train(tmp_path, [f"{group}={option}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    if group == "model":
        with torch.device("meta"):  # shapes only: no memory for gpt2-124m
            net = instantiate(cfg.model)
        assert isinstance(net, GPT)
    elif group == "data" and option == "chat":  # conversations need the tokenizer of the model they fine-tune
        with pytest.raises(InstantiationException, match="data.tokenizer is null: experiment=sft fine-tunes a model"):
            instantiate(cfg.data)
        tokenizer = tmp_path / "tokenizer.json"
        train_tokenizer(["a conversation"] * 4, vocab_size=300).save(str(tokenizer))
        assert instantiate(cfg.data, tokenizer=str(tokenizer)).block_size == cfg.model.config.block_size
    elif group == "data":
        assert instantiate(cfg.data).block_size == cfg.model.config.block_size
    elif group in ("hparams_search", "sweep"):
        hydra_cfg = HydraConfig.get()  # the sweeper and launcher these options select
        if group == "hparams_search":
            assert "optim.lr" in hydra_cfg.sweeper.params and hydra_cfg.sweeper.direction == "minimize"
        else:
            assert cfg.one_job_per_gpu and "joblib" in hydra_cfg.launcher._target_.lower()
    elif group in ("logger", "callbacks"):
        kinds = {"logger": Logger, "callbacks": Callback}[group]
        built = {name: instantiate(node) for name, node in cfg[group].items()}
        assert built and all(isinstance(obj, kinds) for obj in built.values()), built
    elif group == "trainer" and option == "fsdp":  # FSDP needs GPUs: check the strategy it builds
        strategy = instantiate(cfg.trainer.strategy)
        assert Block in strategy.kwargs["auto_wrap_policy"]._module_classes
    elif group in ("trainer", "debug", "experiment"):
        precision = resolve_precision(cfg.trainer.precision, "cpu")
        trainer = instantiate(
            cfg.trainer, precision=precision, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False
        )
        assert trainer.max_steps == (1 if cfg.trainer.get("fast_dev_run") else cfg.trainer.max_steps)
        assert trainer.accumulate_grad_batches == cfg.trainer.accumulate_grad_batches


def test_infer_config_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("infer", overrides=["prompt=hello"])
    assert cfg.prompt == "hello" and cfg.ckpt_path


def test_documented_overrides_work(tmp_path):
    overrides = [
        "model=small",
        "optim.lr=3e-4",
        "seed=7",
        "trainer.max_steps=9",
        "trainer.accumulate_grad_batches=4",
        "trainer.precision=bf16-mixed",
        "data.paths=[/tmp/a,/tmp/b]",
        "ckpt_path=last",
    ]
    cfg = compose_train(tmp_path, overrides, tiny=False)
    assert cfg.module.optim.lr == 3e-4 and cfg.data.seed == 7 and cfg.trainer.accumulate_grad_batches == 4
    assert cfg.data.paths == ["/tmp/a", "/tmp/b"] and cfg.data.block_size == 256
    assert cfg.module.net.config.n_embd == 384


def test_unknown_preset_lists_the_choices(tmp_path):
    with pytest.raises(ConfigCompositionException, match="tiny"):
        compose_train(tmp_path, ["model=huge"])


def test_precision_rules(caplog):
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_precision("16-mixed", "cpu") == "bf16-mixed"
    assert "16-mixed needs a CUDA GPU" in caplog.text
    with pytest.raises(ConfigError, match=r"trainer.precision='fp8' is not one of \['auto', '32-true'"):
        resolve_precision("fp8", "cpu")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.config.block_size=0", "data.block_size=0 (it follows model.config.block_size) must be at least 1"),
        ("model.config.n_kv_head=0", "model.config.n_kv_head=0 must be at least 1"),
        ("model.config.vocab_size=10", "data.vocab_size=10 (it follows model.config.vocab_size) must be at least 259"),
        ("data.batch_size=0", "data.batch_size=0 must be at least 1"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5 must be in [0, 1)"),
        ("optim.lr=-1", "optim.lr=-1 must be > 0"),
        ("optim.beta1=1.5", "optim.beta1=1.5 must be in [0, 1)"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be a whole number"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval=0 must be a number of steps"),
        ("trainer.max_steps=0", "trainer.max_steps=0 must be at least 1, or -1"),
        ("ckpt_path=NOT_A_CKPT", "is not a readable checkpoint"),
        ("one_job_per_gpu=maybe", "one_job_per_gpu='maybe' must be true or false"),
        ("ckpt_path=OTHER_SHAPE", "model.config.n_embd=32 but the checkpoint"),
    ],
)
def test_bad_values_are_named_before_any_data_work(tmp_path, corpus, override, message):
    from train import train

    (tmp_path / "bad.ckpt").write_text("hello")
    shape = instantiate(compose_train(tmp_path, [], corpus).module.net).config.to_dict()
    save_model(tmp_path / "other.ckpt", GPT(GPTConfig(**{**shape, "n_embd": 64})), train_tokenizer(["a b"], 300))
    override = override.replace("NOT_A_CKPT", str(tmp_path / "bad.ckpt"))
    override = override.replace("OTHER_SHAPE", str(tmp_path / "other.ckpt"))
    with pytest.raises(ConfigError) as err:
        train(compose_train(tmp_path, [override], corpus))
    assert message in str(err.value) and "\n" not in str(err.value)  # one line
    assert not list(tmp_path.rglob("manifest.jsonl"))  # failed before ingest
