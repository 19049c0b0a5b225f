"""Test-only pieces that Hydra instantiates from the command line (tests/ is on the path)."""

import hashlib
import json
import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process when optimizer step `step` is about to start: nothing gets to clean up.

    LLM_TEST_KILL=0 in the environment disarms it (a resume replays the run's overrides, this callback too)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and os.environ.get("LLM_TEST_KILL", "1") == "1":
            os.kill(os.getpid(), signal.SIGKILL)


class RecordBatches(L.Callback):
    """Append `<step> <epoch> <sha256 of the inputs>` to the file `out` for every training batch (a killed run and its
    resume write to one file: the resumed lines come last)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        digest = hashlib.sha256(batch["input"].cpu().numpy().tobytes()).hexdigest()
        with open(self.out, "a") as f:
            f.write(f"{trainer.global_step} {trainer.current_epoch} {digest}\n")


class RecordShard(L.Callback):
    """Write `<out>/rank<R>.json`: this rank's place in the world and the windows it trained on, as (epoch, k)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.indices: list[tuple[int, int]] = []
        self.rows_match = True  # every row trained on equals the window its index names

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.order = list(trainer.train_dataloader.sampler)  # the EpochSampler: this rank's windows, in order

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        start = len(self.indices)
        mine = self.order[start : start + len(batch["input"])]
        windows = trainer.datamodule.train_set
        for row, i in zip(batch["input"], mine, strict=True):
            self.rows_match = self.rows_match and bool((row == windows[i]["input"]).all())
        self.indices += mine

    def on_train_end(self, trainer, pl_module) -> None:
        record = {
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "node_rank": trainer.node_rank,
            "num_nodes": trainer.num_nodes,
            "indices": self.indices,
            "rows_match": self.rows_match,
        }
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)
