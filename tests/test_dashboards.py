"""Everything on the dashboard: the config as hyperparameters, samples and heatmaps at the final step, the
final model's validation (what a sweep minimises)."""

import csv
import json
import struct
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from llm.training.loggers import flat_hparams
from train import train

STEPS = ["trainer.max_steps=40", "trainer.val_check_interval=25", "trainer.log_every_n_steps=5"]


def wandb_records(path: Path) -> list:
    """The records of a .wandb file: a 7-byte file header, then LevelDB's log format (32 KiB blocks of chunks,
    each chunk a 7-byte header: crc32c, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"  # then a 2-byte magic number and a version byte
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_the_config_is_flattened_with_dotted_keys(train_cfg):
    flat = flat_hparams(train_cfg())
    assert flat["optim.lr"] == train_cfg().optim.lr and flat["model.config.n_layer"] == 2
    assert "module.net.config.n_layer" not in flat and not any(k.endswith("_target_") for k in flat)
    assert isinstance(flat["data.paths"], list)


def test_wandb_offline_run_of_40_steps_has_the_config_and_samples_at_the_final_step(train_cfg):
    cfg = train_cfg("logger=wandb", *STEPS)
    train(cfg)
    (run,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    history_file = next(run.glob("run-*.wandb"))
    for _ in range(50):  # wandb's writer is a separate process: let it flush what finish() handed over
        records = wandb_records(history_file)
        rows = [  # media are nested: samples/_type, samples/path, ...
            {item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
            for r in records
            if r.HasField("history")
        ]
        if any("samples/_type" in row for row in rows):
            break
        time.sleep(0.2)
    updates = [r.config.update for r in records if r.HasField("config")] + [r.run.config.update for r in records]
    config = {item.key: json.loads(item.value_json) for update in updates for item in update}
    assert config["optim.lr"] == cfg.optim.lr and config["model.config.n_layer"] == 2
    sampled = [int(row["trainer/global_step"]) for row in rows if row.get("samples/_type") == '"table-file"']
    heatmaps = [int(row["trainer/global_step"]) for row in rows if "attention/layer0/_type" in row]
    assert sampled == heatmaps == [9, 19, 29, 39]  # every 10 steps in a 40-step run, the final one included
    val_steps = [int(row["trainer/global_step"]) for row in rows if "val/loss" in row]
    assert val_steps == [24, 39]  # and the final model is validated


def test_tensorboard_and_csv_runs_of_40_steps_have_the_config_samples_and_final_metrics(train_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = train_cfg("logger=many", *STEPS)
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    for folder in ("csv", "tensorboard"):  # hparams.yaml beside each logger's files
        hparams = yaml.safe_load((run / folder / "hparams.yaml").read_text())
        assert hparams["optim.lr"] == cfg.optim.lr and hparams["model.config.n_layer"] == 2, folder
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Tensors("samples/text_summary")] == [9, 19, 29, 39]  # the metrics' steps
    assert [e.step for e in events.Images("attention/layer0")] == [9, 19, 29, 39]
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert start.hparams["optim.lr"].number_value == pytest.approx(cfg.optim.lr)
    assert {m.name.tag for m in experiment.metric_infos} == {"val/loss", "val/bpb"}
    assert events.Scalars("val/loss")[-1].value == pytest.approx(metrics["val/loss"])
    # the objective is the final model's: validated at step 40 although validations fall every 25 steps
    rows = [r for r in csv.DictReader((run / "csv" / "metrics.csv").open()) if r["val/loss"]]
    assert [int(r["step"]) for r in rows] == [24, 39] and float(rows[-1]["val/loss"]) == pytest.approx(
        metrics["val/loss"]
    )
    assert OmegaConf.select(cfg, "callbacks.samples.every_n_steps") == 250  # the cadence came from the run's length
