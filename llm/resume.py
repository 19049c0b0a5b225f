"""Resuming a run: `python train.py ckpt_path=last` continues it in its own folder, with its own config.

- resume_argv: before Hydra composes, the run's recorded overrides (.hydra/overrides.yaml) are put back in
  front of the new ones, and Hydra's run dir is pointed at the run's folder. New overrides win.
- check_resume: what cannot change on a resume (the model's shape, the corpus and its tokenizer) is compared
  with the checkpoint before any data work, and a change is refused by name.
- resume_logger_kwargs: the loggers continue the same history. metrics.csv drops the rows a killed run wrote
  after its last checkpoint (those steps are trained again), TensorBoard purges them, wandb resumes the same run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import OmegaConf

from llm.checkpoint import CONFIG, find_checkpoint, read_checkpoint, read_resume_state, run_folder, saved_model_config
from llm.errors import ConfigError
from llm.model import GPTConfig

log = logging.getLogger(__name__)

# Keys that decide the model's shape or the token ids it reads: fixed for the life of a run
FIXED_KEYS = (
    "data.paths",
    "data.exclude",
    "data.vocab_size",
    "data.tokenizer_sample_mb",
    "data.val_fraction",
    "data.seed",
    "data.align",
)
MUTABLE_MODEL_KEYS = ("dropout", "attn")  # model.config keys a resume may change: no weight depends on them


def override_key(override: str) -> str:
    """'+a.b=1' -> 'a.b'; 'model=small' -> 'model'; '~callbacks.x' -> 'callbacks.x'."""
    return override.split("=", 1)[0].lstrip("+~")


def resume_argv(args: Sequence[str]) -> list[str]:
    """The command line a resume really runs: the run's own overrides, then the new ones, in the run's folder.

    Unchanged when there is no ckpt_path, under a sweep (-m), or when hydra.run.dir is given (DDP ranks that
    Lightning relaunches get it, and so do torchrun runs).
    """
    args = list(args)
    given = {override_key(a): a for a in args if "=" in a and not a.startswith("-")}
    spec = given.get("ckpt_path", "ckpt_path=").split("=", 1)[1].strip("'\"")
    if not spec or spec == "null" or {"-m", "--multirun"} & set(args) or "hydra.run.dir" in given:
        return args
    outputs_root = given.get("paths.outputs_root", "paths.outputs_root=outputs").split("=", 1)[1]
    run = run_folder(find_checkpoint(spec, outputs_root))
    overrides = run / ".hydra" / "overrides.yaml"
    if not overrides.is_file():  # not in a run folder Hydra recorded: a new run folder, this command line only
        return args
    recorded = [str(o) for o in OmegaConf.load(overrides)]
    kept = [o for o in recorded if override_key(o) not in given]
    log.info("resuming %s with its overrides %s", run, kept)
    return [*kept, *args, f"hydra.run.dir={hydra_value(run.resolve())}"]


def hydra_value(path: Path) -> str:
    """A path as a Hydra override value: quoted when it holds characters Hydra's grammar would read."""
    text = str(path)
    if all(c.isalnum() or c in "/._-+" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_resume(path: str | Path, cfg: Mapping) -> None:
    """Refuse, by key, a resume whose model shape or corpus differs from the checkpoint's."""
    ckpt = read_checkpoint(path)
    node = {k: v for k, v in OmegaConf.to_container(cfg["model"]["config"], resolve=True).items() if k != "_target_"}
    ours = GPTConfig(**node).to_dict()
    theirs = GPTConfig(**saved_model_config(ckpt)).to_dict()  # a key added since it was written: its value then
    untied = OmegaConf.select(OmegaConf.create(cfg), "optim.untie_at") is not None  # a head untied in the run
    for key, value in ours.items():
        if key == "tie_embeddings" and untied and value and theirs.get(key) is False:
            continue  # saved after optim.untie_at gave the head its own matrix: the resume unties it too
        if key not in MUTABLE_MODEL_KEYS and theirs.get(key) != value:
            raise ConfigError(
                f"model.config.{key}={value!r} but the checkpoint {path} has {theirs.get(key)!r}: "
                "the model's shape cannot change on a resume (start a new run without ckpt_path)"
            )
    if CONFIG not in ckpt:
        return
    saved = OmegaConf.create(ckpt[CONFIG])
    for key in FIXED_KEYS:
        before, now = OmegaConf.select(saved, key), OmegaConf.select(OmegaConf.create(cfg), key)
        if before is not None and now is not None and _plain(before) != _plain(now):
            raise ConfigError(
                f"{key}={_plain(now)!r} but the checkpoint {path} was trained with {_plain(before)!r}: "
                "the corpus and its tokenizer cannot change on a resume (start a new run without ckpt_path)"
            )


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def resume_logger_kwargs(node: Mapping, ckpt_path: str | Path | None) -> dict:
    """Extra arguments that make a logger continue the checkpoint's history."""
    if ckpt_path is None:
        return {}
    target = str(node.get("_target_", ""))
    if target == "llm.training.loggers.CSVLogger":
        return {"resume_step": read_resume_state(ckpt_path).global_step}  # rows logged after it are dropped
    if target.endswith("TensorBoardLogger"):
        return {"purge_step": read_resume_state(ckpt_path).global_step}  # events logged after it are dropped
    if target.endswith("WandbLogger"):
        run_id = read_resume_state(ckpt_path).wandb_run_id
        return {"id": run_id, "resume": "allow"} if run_id else {}
    return {}
