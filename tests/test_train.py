"""End to end on CPU: the composed train config trains, checkpoints, resumes, and generates."""

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm.checkpoint import find_checkpoint, load_checkpoint
from llm.config import model_preset
from llm.errors import ConfigError
from llm.model import GPT, GPTConfig
from tests.conftest import compose_train
from train import train


def test_fast_dev_run(train_cfg):
    cfg = train_cfg("debug=fdr", "trainer.precision=16-mixed")  # no float16 on CPU: runs in bf16-mixed
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "val/loss" in metrics
    assert "precision: bf16-mixed" in (Path(cfg.paths.output_dir) / "config.yaml").read_text()  # what was used


@pytest.fixture
def trained(train_cfg, caplog):
    cfg = train_cfg("trainer.max_steps=24", "trainer.val_check_interval=8", "optim.lr=1e-2", "optim.warmup_steps=2")
    with caplog.at_level(logging.INFO, logger="llm.train"):
        metrics = train(cfg)
    return cfg, metrics


def test_training_lowers_val_loss_and_writes_self_sufficient_checkpoints(trained, caplog):
    cfg, metrics = trained
    run = Path(cfg.paths.output_dir)
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 3 and val[-1] < val[0] - 0.5
    assert any(r.get("train/tokens_per_sec") for r in rows) and any(r.get("lr") for r in rows)
    # optim=muon: both rates are logged, in the ratio of their peaks (one schedule scales both)
    pairs = [(float(r["lr"]), float(r["lr_muon"])) for r in rows if r.get("lr") and r.get("lr_muon")]
    assert pairs and all(m / a == pytest.approx(cfg.optim.muon.lr / cfg.optim.lr) for a, m in pairs)
    logged = [r.getMessage() for r in caplog.get_records("setup") if r.name == "llm.train"]
    assert any(m.startswith("code: commit ") for m in logged)  # what produced the run, for its figures' captions
    assert (run / "config.yaml").exists() and (run / "data" / "manifest.jsonl").exists()

    last = run / "checkpoints" / "last.ckpt"
    best = list((run / "checkpoints").glob("best-step*.ckpt"))
    assert last.exists() and len(best) == 1
    ckpt = torch.load(last, weights_only=True)  # no pickled objects inside
    assert ckpt["model_config"]["n_layer"] == 2 and "tokenizer" in ckpt and "optim" in ckpt["config"]
    assert find_checkpoint(run, "/nonexistent") == last


def test_val_bpb_is_the_cross_entropy_in_bits_per_byte_of_the_validation_text(trained):
    """Recomputed here from last.ckpt, val.bin and the tokenizer: the windows of docs/training.md, the text's bytes."""
    cfg, metrics = trained
    run = Path(cfg.paths.output_dir)
    rows = [r for r in csv.DictReader((run / "csv" / "metrics.csv").open()) if r.get("val/bpb")]
    assert len(rows) == 3 and rows[-1]["step"] == str(cfg.trainer.max_steps - 1)  # each validation, in metrics.csv
    assert float(rows[-1]["val/bpb"]) < float(rows[0]["val/bpb"])
    model, tokenizer, _ = load_checkpoint(run / "checkpoints" / "last.ckpt")
    folder = Path(json.loads((run / "data" / "dataset.json").read_text())["folder"])
    tokens = torch.from_numpy(np.fromfile(folder / "val.bin", dtype=np.uint16).astype(np.int64))
    block = cfg.model.config.block_size
    scored = min(cfg.data.val_windows * block, len(tokens))  # whole windows from token 0; the last may be short
    stream = torch.cat([tokens, tokens[:1]])  # the last window predicts the first token: the stream is a circle
    nats = 0.0
    with torch.no_grad():
        for start in range(0, scored, block):
            x, y = stream[start : min(start + block, scored)], stream[start + 1 : min(start + block, scored) + 1]
            nats += F.cross_entropy(model.eval()(x[None])[0], y, reduction="sum").item()
    targets = stream[1 : scored + 1].tolist()
    text_bytes = len(tokenizer.decode(targets).encode("utf-8"))  # the end-of-document token decodes to nothing
    assert text_bytes > len(targets)  # more bytes than tokens: merges were learned
    expected = nats / math.log(2) / text_bytes
    assert float(rows[-1]["val/bpb"]) == pytest.approx(expected, rel=1e-4)
    assert float(rows[-1]["val/loss"]) == pytest.approx(nats / scored, rel=1e-4)
    assert metrics["val/bpb"] == pytest.approx(expected, rel=1e-4)


def test_padding_targets_are_left_out_of_the_loss() -> None:
    from llm.data.tokens import IGNORE
    from llm.training.module import token_cross_entropy

    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))
    padded = targets.clone()
    padded[1, 3:] = IGNORE
    kept = torch.ones(2, 5, dtype=torch.bool)
    kept[1, 3:] = False
    expected = F.cross_entropy(logits[kept], targets[kept])
    assert torch.allclose(token_cross_entropy(logits, padded), expected)
    assert not torch.allclose(token_cross_entropy(logits, targets), expected)


def test_checkpoint_alone_restores_the_trained_model(trained, corpus):
    cfg, _ = trained
    model, tokenizer, ckpt = load_checkpoint(find_checkpoint("last", cfg.paths.outputs_root))
    text = (corpus / "mod0.py").read_text()
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    ids = torch.tensor([tokenizer.encode(text).ids[:33]])
    untrained = GPT(GPTConfig(**ckpt["model_config"])).eval()
    with torch.no_grad():
        losses = [F.cross_entropy(m(ids[:, :-1])[0], ids[0, 1:]).item() for m in (model, untrained)]
    assert losses[0] < losses[1] - 1.0  # the trained weights came back, not a fresh init


def test_resume_continues_from_last_checkpoint(trained, train_cfg):
    cfg, _ = trained
    resumed = train_cfg("trainer.max_steps=28", "trainer.val_check_interval=8", f"ckpt_path={cfg.paths.output_dir}")
    train(resumed)
    ckpt = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 28


def test_modded_nanogpt_switches_train_and_resume(train_cfg):
    """Value embeddings, U-net skips, the warmup-stable-decay schedule, multi-token prediction and late untying
    through train.py: trained, saved, resumed with their weights and the schedule's step, loaded for inference."""
    keys = (
        "model.config.value_embeds=1",
        "model.config.unet_skips=true",
        "optim.schedule=wsd",
        "optim.warmup_steps=2",
        "optim.mtp_weights=[0.5,0.25]",
        "optim.mtp_decay_frac=0.5",
        "optim.untie_at=0.5",
    )
    cfg = train_cfg(*keys, "trainer.max_steps=10", "trainer.val_check_interval=5", "trainer.log_every_n_steps=1")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    lr = {int(r["step"]): float(r["lr"]) for r in csv.DictReader((run / "csv" / "metrics.csv").open()) if r.get("lr")}
    assert [lr[step] for step in (2, 3, 4, 5)] == pytest.approx([cfg.optim.lr] * 4)  # stable at the peak
    assert lr[6] > lr[7] > lr[8] > lr[9]  # then the cooldown of the last 40%
    rows = [r for r in csv.DictReader((run / "csv" / "metrics.csv").open()) if r.get("train/mtp_objective")]
    gap = {int(r["step"]): float(r["train/mtp_objective"]) - float(r["train/loss"]) for r in rows}
    assert gap[0] != 0 and all(gap[step] == 0 for step in gap if step >= 5)  # next-token alone from half-way
    resumed = train_cfg(*keys, "trainer.max_steps=14", "trainer.val_check_interval=5", f"ckpt_path={run}")
    train(resumed)
    last = Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 14
    model, _, _ = load_checkpoint(last)
    assert model.config.value_embeds == 1 and model.skip_weights is not None
    assert any(k.endswith("value_embeds.0.weight") for k in ckpt["state_dict"])
    assert ckpt["model_config"]["tie_embeddings"] is False  # untied at step 5 of 10, and resumed untied
    assert model.lm_head.weight is not model.wte.weight
    assert not torch.equal(model.lm_head.weight, model.wte.weight)
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(first["net.lm_head.weight"], first["net.wte.weight"])  # five steps apart already


def test_resuming_on_another_corpus_is_a_clear_error(trained, tmp_path, corpus):
    cfg, _ = trained
    other = tmp_path / "other"
    other.mkdir()
    for i in range(6):
        (other / f"doc{i}.md").write_text(f"Entirely different words, number {i}. " * 40)
    resumed = compose_train(tmp_path / "b", ["trainer.max_steps=28", f"ckpt_path={cfg.paths.output_dir}"], other)
    with pytest.raises(ConfigError, match="^data.paths=.* the corpus and its tokenizer cannot change on a resume"):
        train(resumed)  # refused by name before any data work
    for doc in corpus.iterdir():  # the same folder, other documents: caught when the tokenizers differ
        doc.write_text(f"Entirely different words in {doc.name}. " * 40)
    resumed = compose_train(tmp_path / "c", ["trainer.max_steps=28", f"ckpt_path={cfg.paths.output_dir}"], corpus)
    with pytest.raises(ValueError, match="tokenizer differs from the one built for this corpus"):
        train(resumed)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no last.ckpt under"):
        find_checkpoint("last", tmp_path)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.ckpt")


@pytest.mark.slow
def test_compiled_training_matches_eager() -> None:
    """compile=true (the default on CUDA) compiles the model and the loss; the weights follow eager's."""
    import lightning as L
    from torch.utils.data import DataLoader

    from llm.training import LitGPT
    from llm.training.optim import optim_preset

    switches = dict(qk_norm=False, zero_init_proj=False, logit_softcap=None, tie_embeddings=True)
    config = model_preset(
        "tiny", vocab_size=64, block_size=16, n_layer=1, n_head=2, n_kv_head=None, n_embd=32, **switches
    )
    data = torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(0))
    weights = {}
    for compile in (False, True):
        torch.manual_seed(0)
        module = LitGPT(GPT(config), optim_preset("adamw", lr=1e-2, warmup_steps=1), compile=compile, seed=0)
        quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
        trainer = L.Trainer(max_steps=3, accelerator="cpu", enable_model_summary=False, **quiet)
        trainer.fit(module, DataLoader([{"input": row[:-1], "target": row[1:]} for row in data], batch_size=2))
        assert hasattr(module._cross_entropy, "_torchdynamo_orig_callable") == compile  # the loss compiled too
        weights[compile] = dict(module.net.named_parameters())  # names unchanged by compiling
    for name, eager in weights[False].items():
        # the compiled LayerNorm rounds differently from eager's: a few 1e-5 after three AdamW steps of 1e-2
        torch.testing.assert_close(weights[True][name], eager, rtol=1e-3, atol=1e-4)
    torch.manual_seed(0)
    init = GPT(config).state_dict()
    assert all((p != init[n]).any() for n, p in weights[False].items())  # every weight moved


def test_terminal_bar_reads_the_loss_every_n_steps_only(monkeypatch) -> None:
    """Each read of a logged loss waits for the GPU: the bar reads while training only every n steps."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import TQDMProgressBar

    from llm.training.callbacks import TerminalProgress

    reads = []
    monkeypatch.setattr(
        TQDMProgressBar, "get_metrics", lambda self, trainer, module: reads.append(1) or {"n": len(reads)}
    )
    bar = TerminalProgress(metrics_every_n_steps=10)
    shown = [bar.get_metrics(SimpleNamespace(global_step=s, training=True), None)["n"] for s in range(25)]
    assert len(reads) == 3 and shown[9] == 1 and shown[10] == 2 and shown[24] == 3
    bar.get_metrics(SimpleNamespace(global_step=24, training=False), None)  # validation: read at once
    assert len(reads) == 4


def test_nonfinite_check_reads_losses_once_per_n_optimizer_steps(monkeypatch) -> None:
    """With gradient accumulation, losses are read once when the step count reaches a multiple of n."""
    from types import SimpleNamespace

    from llm.training.callbacks import StopOnNonFiniteLoss

    callback = StopOnNonFiniteLoss(check_every_n_steps=2)
    reads = []
    monkeypatch.setattr(callback, "check", lambda trainer: reads.append(trainer.global_step))
    for micro_batch in range(12):  # accumulate_grad_batches=3: the step count moves every third micro-batch
        trainer = SimpleNamespace(global_step=(micro_batch + 1) // 3)
        callback.on_train_batch_end(trainer, None, torch.tensor(1.0), None, micro_batch)
    assert reads == [0, 2, 4]


def test_plain_progress_eta_counts_from_the_resumed_step(monkeypatch, caplog) -> None:
    """Resumed at step 200 of 300, 10 steps in 1 s: 90 steps remain, about 9 s."""
    import logging
    from types import SimpleNamespace

    from llm.training import callbacks

    clock = iter([100.0, 101.0])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    bar = callbacks.PlainProgress(every_n_steps=10)
    trainer = SimpleNamespace(global_step=200, max_steps=300, callback_metrics={})
    bar.on_train_start(trainer, None)
    trainer.global_step = 210
    with caplog.at_level(logging.INFO, logger="llm.training.callbacks"):
        bar.on_train_batch_end(trainer, None, None, None, 0)
    assert "step 210/300" in caplog.text and "ETA 0m09s" in caplog.text


def test_plain_progress_shows_val_bpb(caplog) -> None:
    import logging
    from types import SimpleNamespace

    from llm.training import callbacks

    bar = callbacks.PlainProgress(every_n_steps=10)
    metrics = {"val/loss": torch.tensor(2.5), "val/ppl": torch.tensor(12.18), "val/bpb": torch.tensor(1.2341)}
    trainer = SimpleNamespace(global_step=20, max_steps=300, callback_metrics=metrics, sanity_checking=False)
    with caplog.at_level(logging.INFO, logger="llm.training.callbacks"):
        bar.on_validation_end(trainer, None)
        bar.on_train_batch_end(trainer, None, None, None, 0)
    validation, step = caplog.messages
    assert validation == "validation at step 20 | val/loss 2.5000 | val/ppl 12.18 | val/bpb 1.234"
    assert step.startswith("step 20/300 | val/loss 2.5000 | val/bpb 1.234")


def test_a_zero_interval_is_named(train_cfg) -> None:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = train_cfg("callbacks.nonfinite.check_every_n_steps=0")
    with pytest.raises(InstantiationException, match="check_every_n_steps=0 must be a whole number of steps"):
        instantiate(cfg.callbacks.nonfinite)
