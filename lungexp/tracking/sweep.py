"""A ``-m`` sweep is one thing in MLflow: a parent run with every job nested under it.

:class:`MLflowSweepCallback` is a Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``). When a
sweep starts it creates the parent run (named after the sweep, tagged with its overrides) and hands
its id and the swept keys to the jobs through environment variables
(:data:`~lungexp.tracking.runs.SWEEP_RUN_ID_ENV`); each job's
:class:`~lungexp.tracking.logger.RunLogger` nests its run there and names it after its swept values.
When the sweep ends -- or the process exits after a failed job -- the parent gets the results table
(``sweep_results.csv`` and ``.png``, also printed), the best child (``best.run_id``) and its value.

Why a parent run rather than a ``sweep_id`` tag: MLflow's runs table groups nested runs under their
parent (collapsible, selectable together for *Compare*) and the parent is a natural home for the
results table. Jobs find the parent through the environment, so any launcher that starts jobs with
this process's environment (the default one, joblib, submitit) works.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lungexp.tracking.provenance import git_tags
from lungexp.tracking.runs import SWEEP_KEYS_ENV, SWEEP_RUN_ID_ENV, create_run, ensure_experiment, short_keys
from lungexp.tracking.stale_runs import mlflow_logger_config
from lungexp.tracking.sweep_report import report_sweep

log = logging.getLogger(__name__)


def swept_overrides(config: DictConfig) -> dict[str, str]:
    """``{key: what is swept}`` of a multirun config: command-line sweeps (``model=cnn3d,resnet3d``) and
    the sweeper's search space (``hydra.sweeper.params``, e.g. Optuna's)."""
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    swept = {o.key_or_group: o.get_value_string() for o in overrides if o.is_sweep_override()}
    space = OmegaConf.select(config, "hydra.sweeper.params") or {}
    swept.update({str(key): str(value) for key, value in space.items()})
    return swept


def sweep_name(config: DictConfig, swept: dict[str, str]) -> str:
    """``demo sweep model=cnn3d,resnet3d aug=none,light``; a search space shows its keys only
    (``train optuna lr,weight_decay,dropout,widths``)."""
    space = OmegaConf.select(config, "hydra.sweeper.params") or {}
    kind = "optuna" if "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_")).lower() else "sweep"
    names = short_keys(list(swept))
    listed = " ".join(f"{names[k]}={v}" for k, v in swept.items() if k not in space)
    searched = ",".join(names[k] for k in swept if k in space)
    return " ".join(part for part in (str(config.task_name), kind, listed, searched) if part)


class MLflowSweepCallback(Callback):
    """Creates the parent run of a ``-m`` sweep and, at its end, the results table (see module docs)."""

    def __init__(self) -> None:
        self._parent: dict[str, Any] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        node = mlflow_logger_config(config)
        if node is None:
            return
        node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
        swept = swept_overrides(config)
        name = sweep_name(config, swept)
        client = MlflowClient(node.tracking_uri)
        experiment_id = ensure_experiment(client, node.experiment_name, node.get("artifact_location"))
        tags = {**git_tags(), "sweep.overrides": " ".join(config.hydra.overrides.task),
                "sweep.dir": str(config.hydra.sweep.dir), "sweep.sweeper": str(config.hydra.sweeper._target_),
                "task_name": str(config.task_name)}
        run_id = create_run(client, experiment_id, name, tags=tags)
        self._parent = {"client": client, "experiment_id": experiment_id, "run_id": run_id, "keys": list(swept),
                        "metric": str(config.optimized_metric), "mode": _direction(config),
                        "tracking_uri": node.tracking_uri}
        os.environ[SWEEP_RUN_ID_ENV] = run_id
        os.environ[SWEEP_KEYS_ENV] = ",".join(swept)
        atexit.register(self._finish, "FAILED")  # a failed job stops Hydra's sweep before on_multirun_end
        log.info("Sweep parent MLflow run %s: %s", run_id, name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._finish)
        self._finish("FINISHED")

    def _finish(self, status: str) -> None:
        if self._parent is None:
            return
        parent, self._parent = self._parent, None
        os.environ.pop(SWEEP_RUN_ID_ENV, None)
        os.environ.pop(SWEEP_KEYS_ENV, None)
        try:
            report_sweep(**parent)
        finally:
            parent["client"].set_terminated(parent["run_id"], status)


def _direction(config: DictConfig) -> str:
    """``max``/``min`` for the optimised metric: Optuna's direction, else the checkpoint callback's mode."""
    direction = str(OmegaConf.select(config, "hydra.sweeper.direction", default="")).lower()
    if direction.startswith("min"):
        return "min"
    if direction.startswith("max"):
        return "max"
    return str(OmegaConf.select(config, "callbacks.model_checkpoint.mode", default="max"))
