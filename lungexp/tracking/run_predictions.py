"""A finished run's test predictions and decision threshold, read back from MLflow, for comparisons.

Training runs hold ``predictions/test_predictions.csv``, ``evaluate`` runs
``predictions/<split>_predictions.csv`` and cross-validation parents the pooled test predictions of
their folds (``predictions/pooled_test_predictions.csv``); the threshold is the run's logged
``<split>/threshold`` metric (chosen on validation; a CV parent's is the mean of its folds').
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException

from lungexp.metrics.comparison import ComparisonError, ScoredRun

PREDICTIONS_FOLDER = "predictions"
# Which predictions of a run are its test predictions, in order of preference.
PREFERRED = ("pooled_test_predictions.csv", "test_predictions.csv")
SUFFIX = "_predictions.csv"
TARGET_PARAMS = "target."  # the logged target (target.kind, target.column, target.primary.kind, ...)


def predictions_artifact(split: str) -> str:
    """Where a run keeps the predictions table of ``split``: ``predictions/test_predictions.csv``, ..."""
    return f"{PREDICTIONS_FOLDER}/{split}{SUFFIX}"


def read_table_artifact(client: MlflowClient, run_id: str, artifact_path: str) -> pd.DataFrame:
    """A CSV artifact of a run (series ids kept as text), read without MLflow's progress bar: a sweep's table or
    a continued CV reads one small file per run, and a bar for each buried the results on the console."""
    with tempfile.TemporaryDirectory() as folder, _no_progress_bar():
        return pd.read_csv(client.download_artifacts(run_id, artifact_path, folder), dtype={"seriesuid": str})


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    name, previous = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[name] = "false"  # MLflow reads it when a download starts
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def get_run(client: MlflowClient, run_id: str) -> Run:
    """The run, or a :class:`ComparisonError` naming the id and the tracking store."""
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ComparisonError(f"no MLflow run {run_id} in {client.tracking_uri}; check the id, or give "
                              "--tracking-uri") from None


def scored_run(client: MlflowClient, run_id: str) -> ScoredRun:
    """The test predictions of a training, ``evaluate`` or cross-validation parent run, with the target it logged."""
    run = get_run(client, run_id)
    files = [PurePosixPath(item.path).name for item in client.list_artifacts(run_id, PREDICTIONS_FOLDER)]
    chosen = next((name for name in PREFERRED if name in files), None)
    chosen = chosen or next((name for name in sorted(files) if name.endswith(SUFFIX)), None)
    if chosen is None:
        raise ComparisonError(f"MLflow run {run_id} ({run.info.run_name}) has no {PREDICTIONS_FOLDER}/*{SUFFIX} "
                              "artifact: was it tested (test_after_fit=true), or is it a sweep's parent run?")
    split = chosen.removesuffix(SUFFIX).removeprefix("pooled_")
    predictions = read_table_artifact(client, run_id, f"{PREDICTIONS_FOLDER}/{chosen}")
    threshold = run.data.metrics.get(f"{split}/threshold", 0.5)
    target = {key: value for key, value in run.data.params.items() if key.startswith(TARGET_PARAMS)}
    return ScoredRun(name=run.info.run_name or run_id[:8], predictions=predictions, threshold=float(threshold),
                     run_id=run_id, settings=target)


def run_setting(run: Run, key: str) -> str | None:
    """A config value as the run logged it: a param, or a tag for paths (see :mod:`lungexp.tracking.params`)."""
    return run.data.params.get(key, run.data.tags.get(key))
