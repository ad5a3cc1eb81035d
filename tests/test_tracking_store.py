"""The MLflow tracking store: a damaged file and a store that another run is still creating are told apart; parallel
jobs that write the same rows at once all go on."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.store.tracking.dbmodels.models import SqlDataset
from sqlalchemy import event
from sqlalchemy.orm import Session

from lungexp.tracking.callback import MLflowTracking
from lungexp.tracking.logger import RunLogger
from lungexp.tracking.logger_setup import TrackingStoreError, open_tracking_store
from lungexp.tracking.provenance import log_dataset
from lungexp.tracking.runs import create_run, ensure_experiment


def test_a_store_being_created_by_another_run_is_retried_not_moved_aside(tmp_path: Path) -> None:
    """Two first runs creating one mlflow.db at once: the loser finds tables the winner has just made."""
    store = tmp_path / "mlflow.db"
    with closing(sqlite3.connect(store)) as db:
        db.execute("CREATE TABLE experiments (x)")  # half of a schema, as the other run's migrations leave it
        db.commit()
    with pytest.raises(TrackingStoreError, match=f"{store}: .*another run is creating or upgrading the store.*"
                                                 "then retry") as info:
        open_tracking_store(f"sqlite:///{store}", "experiment")
    assert "move it aside" not in str(info.value)


def test_a_damaged_store_is_moved_aside(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"this is not an SQLite database\n" * 64)
    with pytest.raises(TrackingStoreError, match=f"{store}: .*if the file is damaged, move it aside"):
        open_tracking_store(f"sqlite:///{store}", "experiment")


def _datamodule(root: Path) -> SimpleNamespace:
    """What dataset logging reads of a datamodule: its fingerprint, sample table, data folder and task."""
    samples = pd.DataFrame({"seriesuid": ["1.2.3", "1.2.4"], "coordX": [1.0, 2.0], "label": [0, 1]})
    return SimpleNamespace(fingerprint="0123456789abcdef", cache=SimpleNamespace(index=samples),
                           options=SimpleNamespace(root=root, task="candidates"))


def test_parallel_jobs_logging_the_same_dataset_at_once_all_log_it(tmp_path: Path) -> None:
    """Another job of the sweep inserts the same dataset between this job's look-up and its insert, which MLflow
    makes in one transaction: the insert fails on the store's unique constraint, and the job must go on."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "race")
    ours, theirs = (create_run(client, experiment_id, name) for name in ("ours", "theirs"))
    datamodule = _datamodule(tmp_path)
    raced: list[bool] = []

    def their_job_first(session: Session, flush_context: object, instances: object) -> None:
        if not raced and any(isinstance(row, SqlDataset) for row in session.new):
            raced.append(True)
            log_dataset(MlflowClient(uri), theirs, datamodule)  # in a session of its own, committed

    event.listen(Session, "before_flush", their_job_first)
    try:
        logger = RunLogger(experiment_name="race", tracking_uri=uri, run_id=ours)
        MLflowTracking(monitor="val/auroc").on_fit_start(SimpleNamespace(loggers=[logger], datamodule=datamodule),
                                                         None)  # type: ignore[arg-type]
    finally:
        event.remove(Session, "before_flush", their_job_first)
    assert raced
    digests = [[inputs.dataset.digest for inputs in client.get_run(run).inputs.dataset_inputs] for run in (ours, theirs)]
    assert digests[0] == digests[1] and len(digests[0]) == 1  # one dataset row, an input of both runs


def test_parallel_jobs_creating_the_same_experiment_at_once_all_use_it(tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, theirs = MlflowClient(uri), MlflowClient(uri)
    look_up = client.get_experiment_by_name

    def their_job_creates_it_right_after(name: str):
        found = look_up(name)
        if found is None:
            theirs.create_experiment(name)
        return found

    monkeypatch.setattr(client, "get_experiment_by_name", their_job_creates_it_right_after)
    assert ensure_experiment(client, "race") == theirs.get_experiment_by_name("race").experiment_id
