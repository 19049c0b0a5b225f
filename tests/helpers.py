"""Test-only pieces that Hydra instantiates from the command line (tests/ is on the path)."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process when optimizer step `step` is about to start: nothing gets to clean up."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
