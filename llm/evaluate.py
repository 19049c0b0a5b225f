"""`python -m llm.evaluate ckpt_path=… 'tasks=[…]'` (or `llm-eval`): score a checkpoint.

tasks: any lm-evaluation-harness task, group or tag (`include_path=DIR` adds task YAMLs of your own), and `bpb`:
bits per byte on held-out documents by kind (the run's validation documents, or `eval.paths=[…]`). Everything is
checked, and every task's data found on this machine, before the model is loaded; nothing reaches the network
unless HF_DATASETS_OFFLINE=0. Scores go to <run>/eval/results.json (lm-eval's format), the run's loggers and its
report.md; the table is printed on stdout. See conf/evaluate.yaml and docs/evaluation.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from llm.checkpoint import CONFIG, GLOBAL_STEP, WANDB_RUN_ID, find_checkpoint, read_checkpoint, run_folder
from llm.config import check_flag, run_command
from llm.errors import ConfigError
from llm.evaluation.results import flat_metrics, log_to_run, table, write_results, write_samples
from llm.evaluation.suite import Plan
from llm.loading import hugging_face_folder, load

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    """Check, load, score, write; returns the results (lm-eval's format)."""
    plan = Plan.make(
        OmegaConf.to_object(cfg.tasks) if OmegaConf.is_list(cfg.tasks) else cfg.tasks,
        cfg.include_path,
        cfg.num_fewshot,
        cfg.limit,
        cfg.batch_size,
        cfg.max_gen_toks,
        cfg.stride,
        cfg.eval.windows,
        cfg.seed,
        check_flag("log_samples", cfg.log_samples),
        questions=cfg.eval.questions,
        retrieval=OmegaConf.to_container(cfg.retrieval, resolve=True),
        outputs_root=cfg.paths.outputs_root,
    )
    report = check_flag("report", cfg.report)
    paths = OmegaConf.to_object(cfg.eval.paths) if OmegaConf.is_list(cfg.eval.paths) else cfg.eval.paths
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    folder = hugging_face_folder(cfg.ckpt_path)  # a Hugging Face model: no run of ours, so no report or loggers
    if folder is not None:
        if cfg.out is None or (plan.bpb and not paths):
            raise ConfigError(
                f"ckpt_path={cfg.ckpt_path} is a Hugging Face folder: give out=DIR for the results (and eval.paths "
                "for bpb: it has no validation documents of ours)"
            )
        path, run_config, step, wandb_id, report = folder, None, 0, None, False
    else:
        path = find_checkpoint(cfg.ckpt_path, cfg.paths.outputs_root)
        raw = read_checkpoint(path)
        run_config = OmegaConf.create(raw[CONFIG]) if raw.get(CONFIG) else None
        step, wandb_id = int(raw.get(GLOBAL_STEP, 0)), raw.get(WANDB_RUN_ID)
        del raw
    run = run_folder(path) if folder is None else folder
    out = Path(cfg.out).expanduser() if cfg.out else run / "eval"
    documents = None
    if plan.bpb:  # found (folders ingested) before the model loads: a bad path stops here
        from llm.evaluation.bpb import folder_documents

        if paths:
            ingest = run_config.data.get("ingest") if run_config is not None and "data" in run_config else None
            settings = OmegaConf.to_container(ingest, resolve=True) if ingest is not None else {}
            documents = folder_documents(paths, out / "data", Path(cfg.paths.cache_dir), settings)
        else:
            documents = validation_corpus(run, run_config)
    model, tokenizer, _, template = load(cfg)
    results = plan.score(model, tokenizer, lambda: documents, template)
    out.mkdir(parents=True, exist_ok=True)
    samples = results.get("samples") or {}
    results = write_results(out, results, {"model": str(path.resolve()), "step": step})
    if plan.log_samples:
        write_samples(out, samples)
    if cfg.out is None and folder is None:  # the run's own eval/: its loggers and report card get the scores too
        log_to_run(run, run_config, flat_metrics(results), step, wandb_id)
        if report:
            from llm.evaluation.report import write_report

            write_report(run, model, tokenizer, str(path), step)
    print(table(results))
    log.info("results: %s", out / "results.json")
    return results


def validation_corpus(run: Path, run_config: DictConfig | None):
    """The run's own held-out documents, split as its training split them."""
    from llm.evaluation.bpb import validation_documents

    if run_config is None or "data" not in run_config:
        raise ConfigError(
            f"tasks=[bpb]: {run} holds no run config to find its validation documents: give eval.paths=[...]"
        )
    return validation_documents(run / "data", run_config.data.val_fraction, run_config.data.seed)


def main() -> None:
    run_command("evaluate", evaluate)


if __name__ == "__main__":
    main()
