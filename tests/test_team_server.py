"""A team tracking server: ``mlflow server`` on PostgreSQL with a shared artifact root, and a run that logs
through it with ``logger=mlflow_server`` (README "A team tracking server")."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lungexp.training.pipeline import train
from tests.helpers.mlflow_ui import mlflow_server
from tests.helpers.postgres import postgres_bin_or_skip, postgres_server
from tests.helpers.processes import MARKER_VARIABLE, kill_marked, marked_processes


@pytest.mark.slow
def test_a_run_logs_through_an_mlflow_server_on_postgresql(make_config, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg2

    bin_dir = postgres_bin_or_skip()
    marker = uuid.uuid4().hex  # inherited by PostgreSQL's and the MLflow server's processes
    monkeypatch.setenv(MARKER_VARIABLE, marker)
    shared_root = tmp_path / "shared-artifacts"
    try:
        with postgres_server(bin_dir) as database, \
                mlflow_server(database, tmp_path / "mlflow-server.log",
                              ["--artifacts-destination", str(shared_root)]) as server:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", server.wait_until_healthy())
            result = train(make_config("logger=mlflow_server", "trainer.max_epochs=1", "callbacks.lr_monitor=null"))

            client = MlflowClient(tracking_uri=server.address)
            run = client.get_run(result.mlflow_run_id)
            assert result.mlflow_tracking_uri == server.address and run.info.status == "FINISHED"
            assert run.data.params["model.net._target_"] == "lungexp.models.CNN3D"
            assert {"val/auroc", "best/val_auroc", "test/auroc", "test/cpm"} <= run.data.metrics.keys()
            artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
            assert {"config.yaml", "roc_curve.png", "predictions"} <= artifacts
            config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "download")))
            assert "lungexp.tracking.logger.RunLogger" in config.read_text()
            # the artifacts went through the server to its shared root, not to a folder of this machine
            assert client.get_experiment(run.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
            assert list(shared_root.rglob("config.yaml"))
            # and the runs live in PostgreSQL
            with psycopg2.connect(database.replace("+psycopg2", "")) as connection, connection.cursor() as cursor:
                cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
                assert cursor.fetchone() == ("FINISHED",)
            connection.close()
    finally:
        left_behind = marked_processes(marker)
        kill_marked(marker)
    assert left_behind == [], [process.pid for process in left_behind]
