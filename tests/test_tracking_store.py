"""Opening the MLflow tracking store: a damaged file and a store that another run is still creating are told apart."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from lungexp.tracking.logger_setup import TrackingStoreError, open_tracking_store


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
