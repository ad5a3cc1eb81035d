"""Resuming a killed run (``ckpt_path=last`` or ``ckpt_path=FILE``) to the result an unbroken run gives.

Lightning restores weights, optimizer, scheduler, epoch and callback states from the checkpoint. Two
things it does not restore are made reproducible here instead: the random draws of each epoch
(augmentation, dropout, shuffling) come from generators re-seeded with ``seed + epoch`` at the start
of every epoch (:class:`EpochSeed`, and the datamodule's per-epoch sampler seed), so epoch ``e`` draws
the same whether the process started at epoch 0 or at ``e``; and the MLflow run id travels in the
checkpoint's recipe, so the resumed run continues the same MLflow run.

A resume must train what the checkpoint's run trained: the config is compared with the one stored in
the checkpoint (:func:`check_resumable`) and only :data:`MAY_CHANGE` may differ; a run that had
already finished is not resumed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.seed import seed_everything
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from lungexp.training.checkpoint import RECIPE_KEY, RUN_CONFIG_KEY
from lungexp.utils.config import to_dict
from lungexp.utils.errors import ConfigError

log = logging.getLogger(__name__)

LAST = "last"
# What defines a run: compared between a resumed config and its checkpoint's, as composed (unresolved, so
# model.scheduler.T_max: ${trainer.max_epochs} follows an allowed change of trainer.max_epochs).
COMPARED = ("seed", "model", "data", "aug", "trainer")
# What a resumed run may change (with everything below each key): how long it trains, where it runs,
# with how many workers and where its patch cache lives.
MAY_CHANGE = ("trainer.max_epochs", "trainer.max_steps", "trainer.accelerator", "trainer.devices",
              "trainer.num_nodes", "trainer.strategy", "data.num_workers", "data.preprocess_workers",
              "data.pin_memory", "data.cache_dir")
_UNSET = "(unset)"


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


def checkpoint_run_id(state: Mapping[str, Any]) -> str | None:
    """The MLflow run a checkpoint was saved from (its recipe's, :mod:`lungexp.training.checkpoint`);
    None if it was saved without MLflow."""
    return ((state.get(RECIPE_KEY) or {}).get("mlflow") or {}).get("run_id")


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The :data:`COMPARED` part of a composed config, unresolved, as a checkpoint stores it."""
    raw = to_dict(cfg, resolve=False)
    return {key: raw[key] for key in COMPARED if key in raw}


def check_resumable(checkpoint: Path, state: Mapping[str, Any], cfg: DictConfig) -> None:
    """Refuse to resume ``checkpoint`` (its loaded ``state``) with a config that trains something else than
    its run did, or when its run had already finished; one :class:`ConfigError` naming the keys."""
    stored = state.get(RUN_CONFIG_KEY)
    if not isinstance(stored, Mapping):
        raise ConfigError(f"ckpt_path={checkpoint}: the checkpoint does not hold the config of its run (it was not "
                          "written by this lungexp's `python -m lungexp.run`), so a resume cannot be checked; start "
                          "a new run from its weights with model.pretrained.path=FILE")
    before, now = _leaves(stored), _leaves(run_config(cfg))
    changed = [key for key in sorted(before.keys() | now.keys())
               if before.get(key, _UNSET) != now.get(key, _UNSET) and not _may_change(key)]
    if changed:
        shown = "; ".join(f"{key}: {before.get(key, _UNSET)!r} in the checkpoint, {now.get(key, _UNSET)!r} now"
                          for key in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        raise ConfigError(f"ckpt_path={checkpoint}: a resumed run must train what its run trained, but {shown}{more}; "
                          f"resume with the run's own config (only {', '.join(MAY_CHANGE)} may change), or start a "
                          "new run without ckpt_path")
    finished = _finished(state, cfg)
    if finished:
        raise ConfigError(f"ckpt_path={checkpoint}: its run had already finished ({finished}); there is nothing to "
                          f"resume. Test it again with `python -m lungexp.evaluate ckpt_path={checkpoint}`, or train "
                          "on from its weights in a new run with model.pretrained.path=FILE")


def _finished(state: Mapping[str, Any], cfg: DictConfig) -> str | None:
    """Why the checkpoint's run had ended, or None: its last epoch done, or stopped early."""
    epochs, limit = int(state.get("epoch", -1)) + 1, cfg.trainer.get("max_epochs")
    if isinstance(limit, int) and 0 < limit <= epochs:
        return f"{epochs} epoch(s) of trainer.max_epochs={limit}"
    stopped = [callback.get("stopped_epoch") for name, callback in (state.get("callbacks") or {}).items()
               if str(name).startswith("EarlyStopping") and isinstance(callback, Mapping)]
    if any(stopped):
        return f"stopped early by callbacks.early_stopping after {epochs} epoch(s)"
    return None


def _leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of a nested mapping (lists are values)."""
    if not isinstance(config, Mapping) or not config:
        return {prefix.rstrip("."): config} if prefix else {}
    return {key: value for name, child in config.items() for key, value in _leaves(child, f"{prefix}{name}.").items()}


def _may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(f"{allowed}.") for allowed in MAY_CHANGE)


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
