"""A ``-m`` sweep is one thing in MLflow: a parent run with every job nested under it.

:class:`MLflowSweepCallback` is a Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``). When a
sweep starts it creates the parent run (named after the sweep, tagged with its overrides) and hands
its id and the swept keys to the jobs through environment variables
(:data:`~lungexp.tracking.runs.SWEEP_RUN_ID_ENV`); each job's
:class:`~lungexp.tracking.logger.RunLogger` nests its run there and names it after its swept values.
When the sweep ends -- or the process exits after a failed job -- the parent gets the results table
(``sweep_results.csv`` and ``.png``, also printed), the best child (``best.run_id``) and its value.

A failed job ends only itself: its run is FAILED with the error as its ``error`` tag and description
(a run is created for a job that failed before it had one, e.g. on a bad option, so every job is in the
table), the other jobs still run, and when all have, the parent run is FAILED and the sweep exits with
status 1 -- what a batch system expects. Hydra's basic sweeper raises the job's error then; the Optuna
sweeper (``max_failure_rate: 1.0`` in ``conf/hparams_search/optuna.yaml``) tells the study the trial
FAILed (no value: the sampler learns nothing from it, and it is never the best trial) and goes on, so
:meth:`MLflowSweepCallback.on_multirun_end` ends the process with status 1.

Why a parent run rather than a ``sweep_id`` tag: MLflow's runs table groups nested runs under their
parent (collapsible, selectable together for *Compare*) and the parent is a natural home for the
results table. Jobs find the parent through the environment, so any launcher that starts jobs with
this process's environment (the default one, joblib, submitit) works.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import DictConfig, OmegaConf

from lungexp.tracking.logger_setup import mlflow_logger_config
from lungexp.tracking.provenance import git_tags
from lungexp.tracking.runs import (
    SWEEP_KEYS_ENV,
    SWEEP_RUN_ID_ENV,
    create_run,
    ensure_experiment,
    job_overrides,
    run_name,
    short_keys,
    split_override,
    sweep_parent_run_id,
)
from lungexp.tracking.stale_runs import HOST_TAG, PID_TAG, PROCESS_START_TAG, process_tags
from lungexp.tracking.sweep_results import NOTE_TAG, report_sweep
from lungexp.utils.dictconfig import to_dict
from lungexp.utils.errors import user_error_in

log = logging.getLogger(__name__)

ERROR_TAG = "error"  # a failed job's error message
FAILED_STATUSES = ("FAILED", "KILLED")
MAX_TAG_LENGTH = 5000  # MLflow's limit for a tag value


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
        self._job_started_ms = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        configured = mlflow_logger_config(config)
        if configured is None:
            return
        node = OmegaConf.create(to_dict(configured, resolve=True))
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

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._job_started_ms = int(time.time() * 1000)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Runs in the job's process (with any launcher): a failed job's run is FAILED, created if need be."""
        node = mlflow_logger_config(config)
        parent_run_id = sweep_parent_run_id()
        if job_return.status != JobStatus.FAILED or not parent_run_id or node is None:
            return
        error = job_return._return_value  # the job's exception; `return_value` would raise it
        user_error = user_error_in(error)
        message = str(user_error) if user_error is not None else f"{type(error).__name__}: {error}"
        record_failed_job(MlflowClient(to_dict(node, resolve=True)["tracking_uri"]),
                          parent_run_id, self._job_started_ms, run_name(config), message)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._finish)
        if self._finish("FINISHED"):
            raise SystemExit(1)  # as when Hydra's basic sweeper re-raises a job's error (see module docs)

    def _finish(self, status: str) -> int:
        """Report the sweep and close its parent run (FAILED if a job failed); returns how many jobs failed."""
        if self._parent is None:
            return 0
        parent, self._parent = self._parent, None
        os.environ.pop(SWEEP_RUN_ID_ENV, None)
        os.environ.pop(SWEEP_KEYS_ENV, None)
        failed = 0
        try:
            table = report_sweep(**parent)
            failures = table[table["status"].isin(FAILED_STATUSES)]
            failed = len(failures)
            if failed:
                log.error("%d of %d jobs of the sweep failed: %s", failed, len(table), ", ".join(failures["run"]))
        finally:
            parent["client"].set_terminated(parent["run_id"], "FAILED" if failed else status)
        return failed


def record_failed_job(client: MlflowClient, parent_run_id: str, started_ms: int, name: str, error: str) -> str:
    """Mark FAILED the run(s) this process started under the sweep since ``started_ms``, or, if the job failed
    before it had a run, create one named ``name`` with the job's swept values as params; returns a run id.

    Both get ``error`` as their ``error`` tag and description, so the sweep's table says why.
    """
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    here = process_tags()
    runs = [run for run in client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' "
                                                               f"and attributes.start_time >= {started_ms}")
            if all(run.data.tags.get(tag) == here[tag] for tag in (HOST_TAG, PID_TAG, PROCESS_START_TAG))]
    run_ids = [run.info.run_id for run in runs]
    if not run_ids:
        swept = set(os.environ.get(SWEEP_KEYS_ENV, "").split(","))
        run_ids = [create_run(client, experiment_id, name, parent_run_id=parent_run_id)]
        for key, value in map(split_override, job_overrides()):
            if key in swept:
                client.log_param(run_ids[0], key, value)
    for run_id in run_ids:
        client.set_tag(run_id, ERROR_TAG, error[:MAX_TAG_LENGTH])
        client.set_tag(run_id, NOTE_TAG, f"**Failed:** {error}"[:MAX_TAG_LENGTH])
        client.set_terminated(run_id, "FAILED")
    return run_ids[0]


def _direction(config: DictConfig) -> str:
    """``max``/``min`` for the optimised metric: Optuna's direction, else the checkpoint callback's mode."""
    direction = str(OmegaConf.select(config, "hydra.sweeper.direction", default="")).lower()
    if direction.startswith("min"):
        return "min"
    if direction.startswith("max"):
        return "max"
    return str(OmegaConf.select(config, "callbacks.model_checkpoint.mode", default="max"))
