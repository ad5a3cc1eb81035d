"""MLflow runs of a cross-validation: one parent run, one nested run per fold, found again on a re-run.

The parent is tagged with a hash of the composed config; running the same command again continues
that parent, and a fold whose run under it FINISHED (and was marked complete) is reused instead of
retrained; one whose run ended unfinished is found with the folder it wrote its checkpoints to. Fold
runs are created here, with the ``mlflow.parentRunId`` tag MLflow nests runs by, and handed to
Lightning's ``MLFlowLogger`` through its ``run_id`` argument.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from pytorch_lightning.loggers import MLFlowLogger

from lungexp.tracking.run_predictions import read_table_artifact
from lungexp.tracking.runs import create_run, ensure_experiment, sweep_parent_run_id
from lungexp.tracking.stale_runs import owner_is_gone, process_tags
from lungexp.utils.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_HASH_TAG = "lungexp.cv.config_hash"
ROLE_TAG = "lungexp.cv.role"  # parent | fold
FOLD_TAG = "lungexp.cv.fold"
COMPLETE_TAG = "lungexp.cv.complete"  # set once a fold's test predictions are logged
OPTIMIZED_METRIC_TAG = "lungexp.cv.optimized_metric"  # the fold's optimized_metric, for a re-run that reuses it
OUTPUT_DIR_TAG = "lungexp.cv.output_dir"  # a fold run's folder (its checkpoints): where a re-run finds its last.ckpt
# On the parent, per fold k: `lungexp.cv.checkpoint.fold<k>` (the file's path) and `...uri.fold<k>` (its copy, an
# artifact of the fold run): what `predict`/`evaluate cv_run=<parent run id>` ensemble.
CHECKPOINT_TAG = "lungexp.cv.checkpoint"
CHECKPOINT_URI_TAG = "lungexp.cv.checkpoint_uri"
CHECKPOINT_ARTIFACTS = "checkpoints"
FOLDS_PARAM = "cv.folds"  # the parent's param (its logged config): how many folds the CV has


@dataclass(frozen=True)
class InterruptedFold:
    """A fold whose run ended before it finished (pre-empted, killed or failed), and the folder it wrote to."""

    run_id: str
    status: str
    output_dir: Path


@dataclass(frozen=True)
class FoldScores:
    """What a fold's run scored: its metrics, and the metric it optimised (what a sweep of CVs is judged by)."""

    metrics: dict[str, float]
    optimized_metric: float | None


@dataclass(frozen=True)
class FinishedFold(FoldScores):
    """A fold that finished in an earlier invocation: its run, its logged metrics and its optimised metric."""

    run_id: str


class FoldRuns:
    """The parent run of one cross-validation (created, or continued when the config hash matches) and its folds.

    Args:
        tracking_uri, experiment_name, artifact_location: as the ``MLFlowLogger`` of the run config.
        config_hash: identifies "the same command" across re-runs.
        run_name: the parent's name; folds are named ``"{run_name} fold{k}"``.
        tags: tags every run gets (e.g. the logger's configured tags).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None, config_hash: str,
                 run_name: str, tags: dict[str, Any] | None = None) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.config_hash = config_hash
        self.run_name = run_name
        self.tags = {key: str(value) for key, value in (tags or {}).items()}
        self.experiment_id = ensure_experiment(self.client, experiment_name, artifact_location)
        previous = self._search(f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}' and tags.`{ROLE_TAG}` = 'parent'")
        self.resumed = bool(previous)
        if previous:
            self.parent_id = previous[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            for key, value in process_tags().items():  # this process owns it now: not a stale run to end
                self.client.set_tag(self.parent_id, key, value)
            log.info("Continuing cross-validation run %s (same config hash %s)", self.parent_id, config_hash)
        else:
            # Inside a `-m` sweep job, the CV's parent nests under the sweep's run.
            self.parent_id = create_run(self.client, self.experiment_id, f"{run_name} cv",
                                        parent_run_id=sweep_parent_run_id(),
                                        tags={**self.tags, ROLE_TAG: "parent", CONFIG_HASH_TAG: config_hash})

    def finished_fold(self, fold: int) -> FinishedFold | None:
        """The completed, FINISHED run of ``fold`` under this parent, if any."""
        runs = self._search(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_id}' and tags.`{FOLD_TAG}` = '{fold}' "
                            f"and tags.`{COMPLETE_TAG}` = 'true' and attributes.status = 'FINISHED'")
        if not runs:
            return None
        optimized = runs[0].data.tags.get(OPTIMIZED_METRIC_TAG)
        return FinishedFold(metrics=dict(runs[0].data.metrics), run_id=runs[0].info.run_id,
                            optimized_metric=float(optimized) if optimized not in (None, "None") else None)

    def interrupted_fold(self, fold: int) -> InterruptedFold | None:
        """The newest run of ``fold`` under this parent if it ended unfinished: KILLED, FAILED, or RUNNING while
        the process that ran it is gone. None when it finished, is still running, or was never started."""
        runs = self._search(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_id}' and tags.`{FOLD_TAG}` = '{fold}'")
        if not runs:
            return None
        newest = runs[0]
        tags, status = newest.data.tags, newest.info.status
        ended = status in ("KILLED", "FAILED") or (status == "RUNNING" and owner_is_gone(tags))
        if tags.get(COMPLETE_TAG) == "true" or not ended or not tags.get(OUTPUT_DIR_TAG):
            return None
        return InterruptedFold(newest.info.run_id, status, Path(tags[OUTPUT_DIR_TAG]))

    def start_fold(self, fold: int, output_dir: str | Path) -> str:
        """A new nested run for ``fold``, writing to ``output_dir``; returns its id for ``MLFlowLogger(run_id=...)``."""
        return create_run(self.client, self.experiment_id, f"{self.run_name} fold{fold}", parent_run_id=self.parent_id,
                          tags={**self.tags, ROLE_TAG: "fold", FOLD_TAG: str(fold), CONFIG_HASH_TAG: self.config_hash,
                                OUTPUT_DIR_TAG: str(Path(output_dir).resolve())})

    def record_checkpoint(self, fold: int, run_id: str, path: str | Path) -> None:
        """Log a fold's best checkpoint as an artifact of its run, and tag the parent with its path and URI."""
        path = Path(path).resolve()
        self.client.log_artifact(run_id, str(path), CHECKPOINT_ARTIFACTS)
        self.client.set_tag(self.parent_id, f"{CHECKPOINT_TAG}.fold{fold}", str(path))
        self.client.set_tag(self.parent_id, f"{CHECKPOINT_URI_TAG}.fold{fold}",
                            f"runs:/{run_id}/{CHECKPOINT_ARTIFACTS}/{path.name}")

    def complete_fold(self, run_id: str, optimized_metric: float | None) -> None:
        """Record the fold's optimised metric and mark its run complete and FINISHED: a re-run reuses it."""
        self.client.set_tag(run_id, OPTIMIZED_METRIC_TAG, str(optimized_metric))
        self.client.set_tag(run_id, COMPLETE_TAG, "true")
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, run_id: str | None) -> None:
        """Mark a fold run (if it was started) and the parent FAILED."""
        for failed in (run_id, self.parent_id):
            if failed is not None:
                self.client.set_terminated(failed, "FAILED")

    def kill(self) -> None:
        """Mark the parent KILLED: a fold was pre-empted (its run marked itself KILLED); a re-run continues."""
        self.client.set_terminated(self.parent_id, "KILLED")

    def finish(self) -> None:
        self.client.set_terminated(self.parent_id, "FINISHED")

    def table_artifact(self, run_id: str, artifact_path: str) -> pd.DataFrame:
        """A CSV artifact of a run (e.g. a finished fold's test predictions) as a DataFrame."""
        return read_table_artifact(self.client, run_id, artifact_path)

    def parent_logger(self) -> MLFlowLogger:
        """A Lightning logger bound to the parent run, for the helpers of :mod:`lungexp.tracking.artifacts`."""
        return MLFlowLogger(experiment_name=self.experiment_name, tracking_uri=self.tracking_uri,
                            run_id=self.parent_id)

    def _search(self, filter_string: str) -> list[Run]:
        return list(self.client.search_runs([self.experiment_id], filter_string,
                                            order_by=["attributes.start_time DESC"]))


def fold_checkpoints(tracking_uri: str, parent_run_id: str, download_to: str | Path) -> list[Path]:
    """The fold checkpoints a CV parent run recorded, by fold: each file where it was written if it is still
    there, else its MLflow artifact downloaded under ``download_to``.

    Raises :class:`~lungexp.utils.errors.ConfigError` when the run is not a CV parent, recorded no checkpoint, or
    is incomplete: a fold of its ``cv.folds`` without a checkpoint (stopped before it finished), since an
    ensemble of the finished folds alone is not the CV's model.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(parent_run_id)
    except MlflowException:
        raise ConfigError(f"cv_run={parent_run_id}: no such MLflow run in {tracking_uri}") from None
    tags = run.data.tags
    folds = sorted(int(key.rsplit("fold", 1)[1]) for key in tags if key.startswith(f"{CHECKPOINT_TAG}.fold"))
    if tags.get(ROLE_TAG) != "parent" or not folds:
        raise ConfigError(f"cv_run={parent_run_id}: not the parent run of a cross-validation that recorded its fold "
                          "checkpoints (tags lungexp.cv.checkpoint.fold<k>); give the parent run id printed by "
                          "`lungexp.run cv.folds=K`, or ckpt_path=[a.ckpt,b.ckpt]")
    planned = run.data.params.get(FOLDS_PARAM, "")
    missing = [fold for fold in range(int(planned)) if fold not in folds] if planned.isdigit() else []
    if missing or (not planned and run.info.status != "FINISHED"):
        raise ConfigError(f"cv_run={parent_run_id}: the cross-validation is incomplete ({run.info.status}): it has "
                          f"the checkpoints of fold(s) {', '.join(map(str, folds))}"
                          + (f" of {planned}, not of fold(s) {', '.join(map(str, missing))}" if missing else "")
                          + (". Those folds finished without saving a checkpoint" if run.info.status == "FINISHED" else
                             f". Finish it by running the same `python -m lungexp.run ... cv.folds={planned or 'K'}` "
                             f"command again (it continues run '{run.info.run_name}' where it stopped)")
                          + "; to use the other folds alone, name their checkpoints: ckpt_path=[a.ckpt,b.ckpt]")
    paths = []
    for fold in folds:
        local = Path(tags[f"{CHECKPOINT_TAG}.fold{fold}"])
        if not local.is_file():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=tags[f"{CHECKPOINT_URI_TAG}.fold{fold}"],
                                                             dst_path=str(Path(download_to) / f"fold{fold}"),
                                                             tracking_uri=tracking_uri))
        paths.append(local)
    return paths
