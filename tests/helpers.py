"""Test-only pieces that Hydra instantiates from the command line (tests/ is on the path)."""

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
