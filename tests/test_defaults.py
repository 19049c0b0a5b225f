"""Every default lives in one place: a key the YAML sets has no default in the code it configures."""

import dataclasses
import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from llm.config import config_dir

CONF = config_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=overrides)


def configs() -> list[DictConfig]:
    """The default composition, then each option of the groups that hold our own classes."""
    runs = [[]]
    runs += [[f"model={m}"] for m in options("model")]
    runs += [[f"optim={o}"] for o in options("optim")] if (CONF / "optim").is_dir() else []
    runs += [["logger=many"], ["logger=wandb"]]
    return [composed(r) for r in runs]


def defaulted(target) -> set[str]:
    """Names of the arguments of a class, dataclass or function that have a default in code."""
    if dataclasses.is_dataclass(target):
        return {
            f.name
            for f in dataclasses.fields(target)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
    fn = target.__init__ if inspect.isclass(target) else target
    return {n for n, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def our_nodes(node, path: str = ""):
    """(path, node) of every node whose _target_ is one of ours."""
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if isinstance(target, str) and target.startswith("llm."):
            yield path, node
        for key in node:
            yield from our_nodes(node._get_node(key), f"{path}.{key}".lstrip("."))


def test_no_key_has_a_default_both_in_the_yaml_and_in_code():
    twice = set()
    seen = 0
    for cfg in configs():
        for path, node in our_nodes(cfg):
            seen += 1
            keys = {k for k in node if not str(k).startswith("_")}
            twice |= {f"{path}.{k} ({node._target_})" for k in keys & defaulted(get_object(node._target_))}
    assert seen >= 5
    assert sorted(twice) == []


@pytest.mark.parametrize(
    ("node", "target"),
    [("optim", "llm.training.module.OptimConfig")],
)
def test_plain_dict_nodes_too(node: str, target: str):
    """Nodes passed on as dicts (no _target_) follow the same rule as their class."""
    cfg = configs()[0]
    keys = set(OmegaConf.select(cfg, node))
    assert keys and not keys & defaulted(get_object(target))


def test_every_model_preset_names_every_model_key():
    """A checkpoint's model.config and `--cfg job` show the whole architecture, whichever preset."""
    from llm.model import GPTConfig

    required = {f.name for f in dataclasses.fields(GPTConfig)} - defaulted(GPTConfig)
    for name in options("model"):
        node = OmegaConf.load(CONF / "model" / f"{name}.yaml").config
        assert required <= set(node), (name, sorted(required - set(node)))
    assert Path(CONF / "model" / "tiny.yaml").is_file()
