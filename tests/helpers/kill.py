"""A callback that SIGKILLs its own training process mid-epoch: a crash no code can clean up after."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class KillAtStep(Callback):
    """``+callbacks.kill._target_=tests.helpers.kill.KillAtStep +callbacks.kill.step=N``: SIGKILL at step N."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
