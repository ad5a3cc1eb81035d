"""Resuming a killed run (``ckpt_path=last`` or ``ckpt_path=FILE``) to the result an unbroken run gives.

Lightning restores weights, optimizer, scheduler, epoch and callback states from the checkpoint. Two
things it does not restore are made reproducible here instead: the random draws of each epoch
(augmentation, dropout, shuffling) come from generators re-seeded with ``seed + epoch`` at the start
of every epoch (:class:`EpochSeed`, and the datamodule's per-epoch sampler seed), so epoch ``e`` draws
the same whether the process started at epoch 0 or at ``e``; and the MLflow run id travels in the
checkpoint's recipe, so the resumed run continues the same MLflow run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import seed_everything
from pytorch_lightning.callbacks import Callback

from lungexp.training.checkpoint import RECIPE_KEY
from lungexp.utils.errors import ConfigError

log = logging.getLogger(__name__)

LAST = "last"


def resolve_checkpoint(ckpt_path: str | None, task_dir: Path) -> Path | None:
    """``ckpt_path`` as a file: ``last`` is the newest ``last.ckpt`` of any run under ``task_dir``
    (``logs/<task_name>``), anything else a checkpoint file that must exist."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == LAST:
        found = sorted(task_dir.glob("**/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"ckpt_path=last: no last.ckpt under {task_dir} (is task_name right? runs save it with "
                              "callbacks.last_checkpoint); or give the file: ckpt_path=/path/to/x.ckpt")
        return found[-1]
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file; give a .ckpt file or ckpt_path=last")
    return path


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The MLflow run a checkpoint was saved from (its recipe's, :mod:`lungexp.training.checkpoint`);
    None if it was saved without MLflow."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return ((state.get(RECIPE_KEY) or {}).get("mlflow") or {}).get("run_id")


class EpochSeed(Callback):
    """Re-seeds every random generator with ``seed + epoch`` when a training epoch starts, so a run
    resumed at epoch ``e`` draws what an unbroken run draws in epoch ``e``.

    Exact with ``data.num_workers=0``; DataLoader workers that persist across epochs keep their own
    random streams, so with workers the augmentation after a resume differs (the run is still valid).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_everything(self.seed + trainer.current_epoch, workers=True, verbose=False)
