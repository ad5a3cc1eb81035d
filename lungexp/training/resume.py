"""Resuming a killed run (``ckpt_path=last`` or ``ckpt_path=FILE``) to the result an unbroken run gives.

Lightning restores weights, optimizer, scheduler, epoch and callback states from the checkpoint. Two
things it does not restore are made reproducible here instead: the random draws of each epoch
(augmentation, dropout, shuffling) come from generators re-seeded with ``seed + epoch`` at the start
of every epoch (:class:`EpochSeed`, and the datamodule's per-epoch sampler seed), so epoch ``e`` draws
the same whether the process started at epoch 0 or at ``e``; and the MLflow run id travels in the
checkpoint's recipe, so the resumed run continues the same MLflow run.

A resume must train what the checkpoint's run trained (:func:`check_resumable`): the config is compared
with the one stored in the checkpoint, and only :data:`MAY_CHANGE` may differ; the data is compared as
what it resolves to: the files and folders the data options name (:data:`DATA_LOCATIONS`) before anything
is built, and the data fingerprint once the data is set up (:class:`SameData`). Resuming is for runs that
were stopped: a run that had finished (its MLflow run FINISHED; without MLflow, its training at its own
limits) trains on only with ``extend_finished=true``. A run whose training had ended but whose test had
not (killed while testing) is resumed to be tested.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.seed import seed_everything
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from lungexp.data.options import DataOptions
from lungexp.tracking.logger_setup import mlflow_logger_config
from lungexp.tracking.provenance import data_fingerprint
from lungexp.tracking.stale_runs import HOST_TAG, PID_TAG, owner_alive
from lungexp.training.checkpoint import (
    DATA_IDENTITY_KEY,
    RECIPE_KEY,
    RUN_CONFIG_KEY,
    check_target,
    read_checkpoint,
)
from lungexp.training.distributed import is_rank_zero
from lungexp.training.run_options import RunOptions
from lungexp.utils.dictconfig import to_dict
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
# The data options naming files and folders: compared as the paths they resolve to, however they are written
# (`${paths.data_dir}/luna16`, an absolute path, a relative one).
DATA_LOCATIONS = tuple(f"data.{option.name}" for option in fields(DataOptions)
                       if option.type in ("Path", "Path | None") and f"data.{option.name}" not in MAY_CHANGE)
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


def data_locations(data: DataOptions) -> dict[str, str | None]:
    """Each of :data:`DATA_LOCATIONS` as the absolute path it resolves to from here (None where unset)."""
    locations = {}
    for key in DATA_LOCATIONS:
        value = getattr(data, key.removeprefix("data."))
        locations[key] = str(Path(value).resolve()) if value else None
    return locations


@dataclass(frozen=True)
class Resume:
    """A checkpoint that this config may resume (:func:`prepare_resume`).

    Args:
        checkpoint: the ``.ckpt`` file.
        run_id: the MLflow run it continues; None: a new run (tagged ``resumed_from``).
        fingerprint: the data fingerprint its run trained on, if the checkpoint records it.
        extends: why its run counted as finished, when ``extend_finished=true`` trains it on.
    """

    checkpoint: Path
    run_id: str | None = None
    fingerprint: str | None = None
    extends: str | None = None

    def callbacks(self) -> list[Callback]:
        """What checks the resumed run once its data is set up."""
        return [SameData(self.checkpoint, self.fingerprint)] if self.fingerprint else []

    def tags(self) -> dict[str, str]:
        """Tags of the continued run that say it was resumed (and extended)."""
        return {"resumed_from": str(self.checkpoint),
                **({"resume.extended_finished": self.extends} if self.extends else {})}


def prepare_resume(run: RunOptions) -> Resume | None:
    """``ckpt_path`` found, read and checked (:func:`check_resumable`) against ``run`` and the MLflow run it
    continues; None without ``ckpt_path``. One :class:`ConfigError` for anything that must not be resumed."""
    cfg = run.config
    checkpoint = resolve_checkpoint(cfg.get("ckpt_path"), Path(cfg.paths.log_dir) / str(cfg.task_name))
    if checkpoint is None:
        if cfg.get("extend_finished"):
            raise ConfigError("extend_finished=true trains on a finished run, named by ckpt_path=FILE (or "
                              "ckpt_path=last); without ckpt_path there is none: drop extend_finished")
        return None
    state = read_checkpoint(checkpoint)
    run_id, status = _checkpoint_run(checkpoint, checkpoint_run_id(state), cfg)
    extends = check_resumable(checkpoint, state, run, status)
    if extends:
        log.warning("ckpt_path=%s: its run had finished (%s); extend_finished=true: it trains on in %s, and its "
                    "test metrics are replaced by the new test's", checkpoint, extends,
                    f"MLflow run {run_id}" if run_id else "a new MLflow run")
    elif _training_ended(state, run_config(cfg)):  # and its run had not: stopped while testing
        log.info("ckpt_path=%s: its training had ended, but its MLflow run %s is %s: it is tested now", checkpoint,
                 run_id, status)
    identity = state.get(DATA_IDENTITY_KEY)
    fingerprint = identity.get("fingerprint") if isinstance(identity, Mapping) else None
    return Resume(checkpoint, run_id, fingerprint if isinstance(fingerprint, str) else None, extends)


def _checkpoint_run(checkpoint: Path, run_id: str | None, cfg: DictConfig) -> tuple[str | None, str | None]:
    """The checkpoint's MLflow run ``run_id`` and its status, if the run is in this run's tracking store (a
    RUNNING run counts as KILLED: its process is gone, or runs on another host, which cannot be checked from
    here); else ``(None, None)``: a new run, tagged ``resumed_from``. A run that a live process of this machine
    is training is refused."""
    logger = mlflow_logger_config(cfg)
    uri = logger.get("tracking_uri") if logger is not None else None
    if run_id is None or uri is None:
        return None, None
    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException:
        log.warning("MLflow run %s of %s is not in %s: the resumed run is a new MLflow run", run_id, checkpoint, uri)
        return None, None
    status = run.info.status
    if status == RunStatus.to_string(RunStatus.RUNNING):
        # DDP ranks > 0 start after (or with) their rank 0, which has opened the run already: it is theirs.
        if is_rank_zero() and owner_alive(run.data.tags):
            raise ConfigError(f"ckpt_path={checkpoint}: its MLflow run {run_id} is RUNNING in process "
                              f"{run.data.tags[PID_TAG]} on {run.data.tags[HOST_TAG]}, which is alive: it is being "
                              "trained right now; wait for it to end (or stop it) before resuming it")
        status = RunStatus.to_string(RunStatus.KILLED)  # its process is gone (or on a host this one cannot check)
    return run_id, status


def check_resumable(checkpoint: Path, state: Mapping[str, Any], run: RunOptions,
                    run_status: str | None = None) -> str | None:
    """Refuse to resume ``checkpoint`` (its loaded ``state``) with a run that trains something else than its
    run did, on other data, or when its run had finished; one :class:`ConfigError` naming what differs.

    ``run_status``: its MLflow run's status, None where it has none here. Returns why the run counted as
    finished when ``extend_finished=true`` trains it on anyway, else None.
    """
    cfg = run.config
    recipe = state.get(RECIPE_KEY)
    if isinstance(recipe, Mapping):
        check_target(recipe.get("target"), run.target, f"ckpt_path={checkpoint}")
    stored = state.get(RUN_CONFIG_KEY)
    if not isinstance(stored, Mapping):
        raise ConfigError(f"ckpt_path={checkpoint}: the checkpoint does not hold the config of its run (it was not "
                          "written by this lungexp's `python -m lungexp.run`), so a resume cannot be checked; start "
                          "a new run from its weights with model.pretrained.path=FILE")
    identity = state.get(DATA_IDENTITY_KEY)
    locations = identity.get("locations") if isinstance(identity, Mapping) else None
    located = isinstance(locations, Mapping)  # else (older checkpoints) the paths are compared as written
    before, now = _leaves(stored), _leaves(run_config(cfg))
    changed = [key for key in sorted(before.keys() | now.keys())
               if before.get(key, _UNSET) != now.get(key, _UNSET) and not _may_change(key)
               and not (located and key in DATA_LOCATIONS)]  # compared resolved, below
    if changed:
        differences = _differences(_outermost(changed), stored, run_config(cfg))
        raise ConfigError(f"ckpt_path={checkpoint}: a resumed run must train what its run trained, but "
                          f"{differences}; resume with the run's own config (only "
                          f"{', '.join(MAY_CHANGE)} may change), or start a new run without ckpt_path")
    if isinstance(locations, Mapping):
        _check_data_locations(checkpoint, locations, data_locations(run.data))
    return _check_not_finished(checkpoint, state, cfg, run_status)


def _check_data_locations(checkpoint: Path, before: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    moved = [key for key in DATA_LOCATIONS if before.get(key, _UNSET) != now.get(key, _UNSET)]
    if moved:
        raise ConfigError(f"ckpt_path={checkpoint}: a resumed run must train on the data its run trained on, but "
                          f"{_differences(moved, before, now)} (paths as resolved); resume with that data (check "
                          "paths.data_dir and data.root), or start a new run without ckpt_path")


def _differences(keys: list[str], before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """``key: <before> in the checkpoint, <now> now`` for the first six ``keys`` (dotted, into nested or flat
    mappings), each value cut to a readable length."""
    shown = "; ".join(f"{key}: {_shown(_node(before, key))} in the checkpoint, {_shown(_node(now, key))} now"
                      for key in keys[:6])
    return shown + (f" (and {len(keys) - 6} more)" if len(keys) > 6 else "")


def _outermost(keys: list[str]) -> list[str]:
    """``keys`` without those below another of them: a node that is null on one side and a mapping on the other
    differs in each of its leaves, and is one difference (``aug.train``, not also ``aug.train._target_``)."""
    return [key for key in keys if not any(key.startswith(f"{other}.") for other in keys)]


def _node(config: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` (a leaf or a whole mapping), :data:`_UNSET` where there is none."""
    if key in config:
        return config[key]
    node: Any = config
    for name in key.split("."):
        if not isinstance(node, Mapping) or name not in node:
            return _UNSET
        node = node[name]
    return node


def _shown(value: Any, width: int = 80) -> str:
    text = value if value is _UNSET else repr(value)
    return text if len(text) <= width else f"{text[:width - 1]}…"


def _check_not_finished(checkpoint: Path, state: Mapping[str, Any], cfg: DictConfig,
                        run_status: str | None) -> str | None:
    """Refuse a run that had finished unless ``extend_finished=true``, and a resume with nothing left to do."""
    ended = _training_ended(state, state.get(RUN_CONFIG_KEY) or {})
    if run_status is None:
        finished = f"its training had ended: {ended}" if ended else None
    else:
        finished = "its MLflow run is FINISHED" if run_status == RunStatus.to_string(RunStatus.FINISHED) else None
    reached = _training_ended(state, run_config(cfg))  # by the limits asked for now
    if finished and not cfg.get("extend_finished"):
        picked = " (the newest last.ckpt of this task_name)" if str(cfg.get("ckpt_path")) == LAST else ""
        raise ConfigError(f"ckpt_path={checkpoint}{picked}: its run had already finished ({finished}); resuming is "
                          "for stopped runs. To train it on in its run, add extend_finished=true and raise "
                          f"trainer.max_epochs; to test it again, `python -m lungexp.evaluate ckpt_path={checkpoint}`; "
                          "to train on from its weights in a new run, model.pretrained.path=FILE")
    if reached and (finished or not ended):
        raise ConfigError(f"ckpt_path={checkpoint}: nothing is left to train ({reached}); raise trainer.max_epochs "
                          "(or trainer.max_steps) to train on, or start a new run without ckpt_path")
    return finished


def _training_ended(state: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """Why a checkpoint's training is over under the ``trainer`` limits of ``config`` (stored or asked for now),
    or None: its last epoch done, its last step done, or stopped early."""
    epochs, steps = int(state.get("epoch", -1)) + 1, int(state.get("global_step", 0))
    trainer = config.get("trainer") or {}
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if isinstance(max_epochs, int) and 0 < max_epochs <= epochs:
        return f"{epochs} epoch(s) of trainer.max_epochs={max_epochs}"
    if isinstance(max_steps, int) and 0 < max_steps <= steps:
        return f"{steps} step(s) of trainer.max_steps={max_steps}"
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


class SameData(Callback):
    """Refuses a resumed run whose data, once set up, has another fingerprint than the data its run trained on
    (same paths, other content: scans replaced, candidates added), before anything is trained."""

    def __init__(self, checkpoint: Path, fingerprint: str) -> None:
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        now = data_fingerprint(trainer.datamodule)  # type: ignore[attr-defined]  # set by Lightning, undeclared
        if stage == "fit" and now is not None and now != self.fingerprint:
            raise ConfigError(f"ckpt_path={self.checkpoint}: a resumed run must train on the data its run trained "
                              f"on, but the data's fingerprint is {now} now and was {self.fingerprint} (the scans or "
                              "the labels under the same paths have changed since); resume with that data, or start "
                              "a new run without ckpt_path")


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
