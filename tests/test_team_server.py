"""A team tracking server: ``scripts/team_server.sh`` (``mlflow server`` with MLflow's basic-auth app, on
PostgreSQL, secrets from an env file and a .pgpass) and runs that log through it with ``logger=mlflow_server``
(docs/scaling.md "A team tracking server"), and a model registered through it and loaded by name."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from lungexp.config.check import check
from lungexp.inference.model import Predictor
from lungexp.inference.registered import register_model
from lungexp.tracking.logger_setup import open_tracking_store
from lungexp.tracking.server import CREDENTIAL_VARIABLES, ServerAccessError
from lungexp.training.pipeline import train
from lungexp.utils.errors import ConfigError
from tests.helpers.mlflow_ui import mlflow_server
from tests.helpers.postgres import DATABASE, postgres_bin_or_skip, postgres_server
from tests.helpers.processes import MARKER_VARIABLE, kill_marked, marked_processes

REPO = Path(__file__).resolve().parents[1]
TEAM_SERVER = REPO / "scripts" / "team_server.sh"
AUTH_CONFIG = REPO / "scripts" / "team_server_auth.ini"
AUTH_DATABASE = "mlflow_auth"
# mlflow.server.auth.routes.CREATE_USER and GRANT_USER_PERMISSION
CREATE_USER = "/api/2.0/mlflow/users/create"
GRANT_USER_PERMISSION = "/api/3.0/mlflow/users/permissions/grant"


def as_admin(address: str, admin_password: str, endpoint: str, payload: dict[str, str]) -> None:
    """What ``mlflow.server.auth.client.AuthServiceClient`` sends (importing it loads the whole MLflow server,
    tens of seconds on a busy machine)."""
    reply = requests.post(f"{address}{endpoint}", json=payload, auth=("admin", admin_password), timeout=60)
    assert reply.status_code == 200, reply.text


def login(monkeypatch: pytest.MonkeyPatch, user: str | None, password: str = "") -> None:
    """Log this process's MLflow client in as ``user`` (or out, with None), as a user would: by environment."""
    for name, value in zip(CREDENTIAL_VARIABLES, (user, password), strict=True):
        if user is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.mark.parametrize("uri", ["http://alice:s3cret@127.0.0.1:9/", "HTTPS://alice:s3cret@127.0.0.1:9/",
                                 "postgresql://alice:s3cret@127.0.0.1:9/mlflow"])
def test_a_password_in_the_tracking_uri_is_refused_before_any_request(uri: str) -> None:
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") as error:
        open_tracking_store(uri, "lungexp")  # port 9 (discard): nothing answers
    assert "s3cret" not in str(error.value)


# Values a shell would run, expand or cut; the env file gives them to the server as written.
LITERAL = {"MLFLOW_AUTH_ADMIN_PASSWORD": "a&touch pwned;b$$c`touch pwned`d\\e#f'g\"h",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": " two words # not a comment ",
           "MLFLOW_ARTIFACTS_DESTINATION": "/srv/mlflow/artifacts"}


def fake_team_server(folder: Path) -> Path:
    """``scripts/team_server.sh`` in ``folder`` with a fake ``.venv/bin/mlflow`` that prints what it was given, a
    .pgpass and an auth config: what the script checks before it starts the server."""
    script = folder / "scripts" / "team_server.sh"
    script.parent.mkdir()
    script.write_text(TEAM_SERVER.read_text())
    mlflow = folder / ".venv" / "bin" / "mlflow"
    mlflow.parent.mkdir(parents=True)
    names = " ".join(LITERAL)
    mlflow.write_text(f'#!/bin/bash\nfor name in {names}; do printf "%s=%s\\0" "$name" "${{!name}}"; done\n')
    mlflow.chmod(0o755)
    (folder / "pgpass").touch(mode=0o600)
    (folder / "auth.ini").touch()
    return script


def start(script: Path, lines: list[str]) -> subprocess.CompletedProcess:
    env_file = script.parents[1] / "server.env"
    env_file.write_text("\n".join(lines) + "\n")
    env_file.chmod(0o600)
    return subprocess.run(["bash", str(script)], cwd=script.parents[1], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LUNGEXP_SERVER_ENV": str(env_file)})


REQUIRED = ["MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow@localhost/mlflow", "PGPASSFILE=pgpass",
            "MLFLOW_AUTH_CONFIG_PATH=auth.ini"]


def test_the_env_file_is_data_not_shell(tmp_path: Path) -> None:
    script = fake_team_server(tmp_path)
    proc = start(script, ["# the team server", "", *REQUIRED,
                          f"MLFLOW_AUTH_ADMIN_PASSWORD={LITERAL['MLFLOW_AUTH_ADMIN_PASSWORD']}",
                          f"MLFLOW_FLASK_SERVER_SECRET_KEY='{LITERAL['MLFLOW_FLASK_SERVER_SECRET_KEY']}'",
                          f'MLFLOW_ARTIFACTS_DESTINATION="{LITERAL["MLFLOW_ARTIFACTS_DESTINATION"]}"\r'])
    assert proc.returncode == 0, proc.stderr
    assert dict(item.split("=", 1) for item in proc.stdout.split("\0") if item) == LITERAL
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("line, message", [
    ("export PGPASSFILE=pgpass", "line 4: not KEY=value"),
    ("MLFLOW_AUTH_ADMIN_PASSWORD = secret", "line 4: not KEY=value"),
    ("MLFLOW_TRACKING_PASSWORD=secret", "line 4: unknown key MLFLOW_TRACKING_PASSWORD"),
    ("PGPASSFILE=secret", "line 4: PGPASSFILE is set a second time"),
    ("MLFLOW_AUTH_ADMIN_PASSWORD=secret   # the first start creates the admin", 'holds " #"'),
    ("MLFLOW_AUTH_ADMIN_PASSWORD=secret ", "starts or ends with a space or an unmatched quote"),
    ("MLFLOW_AUTH_ADMIN_PASSWORD='secret", "starts or ends with a space or an unmatched quote"),
], ids=["export", "spaces-around-equals", "unknown-key", "set-twice", "inline-comment", "trailing-space",
        "unmatched-quote"])
def test_an_env_file_line_that_is_not_plain_data_is_refused_by_number(tmp_path: Path, line: str, message: str) -> None:
    proc = start(fake_team_server(tmp_path), [*REQUIRED, line])
    assert proc.returncode == 2 and proc.stdout == ""
    assert message in proc.stderr and "secret" not in proc.stderr


@pytest.mark.slow
@pytest.mark.server
def test_a_team_server_takes_logins_and_keeps_runs_in_postgresql(make_config, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg2

    bin_dir = postgres_bin_or_skip()
    pytest.importorskip("flask_wtf", reason="Flask-WTF (MLflow's basic-auth app) is not installed "
                                            "(pip install -e '.[server]')")
    password = {name: secrets.token_urlsafe(16) for name in ("database", "admin", "writer", "reader")}
    marker = uuid.uuid4().hex  # inherited by PostgreSQL's and the MLflow server's processes
    monkeypatch.setenv(MARKER_VARIABLE, marker)
    login(monkeypatch, None)
    shared_root = tmp_path / "shared-artifacts"
    try:
        with postgres_server(bin_dir, password["database"], (DATABASE, AUTH_DATABASE)) as postgres:
            auth_config = tmp_path / "basic_auth.ini"
            auth_config.write_text(AUTH_CONFIG.read_text().replace(
                "postgresql+psycopg2://mlflow@localhost/mlflow_auth", postgres.uri(AUTH_DATABASE)))
            env_file = tmp_path / "server.env"
            env_file.write_text(f"MLFLOW_BACKEND_STORE_URI={postgres.uri()}\n"
                                f"PGPASSFILE={postgres.write_pgpass(tmp_path / 'pgpass')}\n"
                                f"MLFLOW_AUTH_CONFIG_PATH={auth_config}\n"
                                f"MLFLOW_AUTH_ADMIN_PASSWORD={password['admin']}\n"
                                f"MLFLOW_FLASK_SERVER_SECRET_KEY={secrets.token_hex(16)}\n"
                                f"MLFLOW_ARTIFACTS_DESTINATION={shared_root}\n")
            env_file.chmod(0o600)
            monkeypatch.setenv("LUNGEXP_SERVER_ENV", str(env_file))
            monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
            with mlflow_server(postgres.uri(), tmp_path / "mlflow-server.log", program=["bash", str(TEAM_SERVER)]) \
                    as server:
                address = server.wait_until_healthy()
                monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
                command_lines = [" ".join(process.cmdline()) for process in marked_processes(marker)]
                assert not [line for line in command_lines if password["database"] in line or password["admin"] in line]

                # No login: refused, by the server and by lungexp before any work.
                with pytest.raises(ServerAccessError, match="HTTP 401.*MLFLOW_TRACKING_USERNAME"):
                    train(check(make_config("logger=mlflow_server"), "run"))

                for user in ("writer", "reader"):
                    as_admin(address, password["admin"], CREATE_USER, {"username": user, "password": password[user]})
                as_admin(address, password["admin"], GRANT_USER_PERMISSION,
                         {"username": "writer", "resource_type": "experiment", "resource_id": "*", "permission": "EDIT"})

                # The right user: the run lands (params, metrics, artifacts through the server, PostgreSQL).
                login(monkeypatch, "writer", password["writer"])
                result = train(check(make_config("logger=mlflow_server", "trainer.max_epochs=1", "callbacks.lr_monitor=null"), "run"))
                client = MlflowClient(tracking_uri=address)
                run = client.get_run(result.mlflow_run_id)
                assert result.mlflow_tracking_uri == address and run.info.status == "FINISHED"
                assert run.data.params["model.net._target_"] == "lungexp.models.CNN3D"
                assert {"val/auroc", "best/val_auroc", "test/auroc", "test/cpm"} <= run.data.metrics.keys()
                artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
                assert {"config.yaml", "roc_curve.png", "predictions"} <= artifacts
                config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "download")))
                assert "lungexp.tracking.logger.RunLogger" in config.read_text()
                logged = [config.read_text(), *run.data.params.values(), *run.data.tags.values()]
                assert not [text for text in logged if password["writer"] in text]
                # the artifacts went through the server to its shared root, not to a folder of this machine
                assert client.get_experiment(run.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
                assert list(shared_root.rglob("config.yaml"))

                # A model a colleague loads by name, registered through the same server (artifacts by its proxy).
                previous_uris = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
                try:
                    registered = register_model([result.best_checkpoint], "team-fpr", tracking_uri=address)
                    loaded = mlflow.pyfunc.load_model(registered.uri, model_config={"device": "cpu"})
                finally:
                    mlflow.set_tracking_uri(previous_uris[0])
                    mlflow.set_registry_uri(previous_uris[1])
                predictor = Predictor(result.best_checkpoint, device="cpu")
                patch = predictor.recipe.patch
                patches = np.random.default_rng(0).uniform(
                    -1000, 400, (3, patch.channels, patch.size, patch.size, patch.size)).astype(np.float32)
                np.testing.assert_array_equal(loaded.predict(patches), predictor.patch_probabilities(patches))
                registry = MlflowClient(tracking_uri=address, registry_uri=address)  # not the process-wide one
                assert registry.get_model_version_by_alias("team-fpr", "champion").version == registered.version

                login(monkeypatch, "admin", password["admin"])  # admins write anywhere, without grants
                open_tracking_store(address, client.get_experiment(run.info.experiment_id).name)

                # A read-only user reads, but cannot write: lungexp says so before any work, the server refuses.
                login(monkeypatch, "reader", password["reader"])
                assert client.get_run(run.info.run_id).info.status == "FINISHED"
                with pytest.raises(ServerAccessError, match="user 'reader'.*HTTP 403"):
                    train(check(make_config("logger=mlflow_server"), "run"))
                delete = f"{address}/api/2.0/mlflow/runs/delete"
                refused = {"no login": requests.post(delete, json={"run_id": run.info.run_id}, timeout=60).status_code,
                           "reader": requests.post(delete, json={"run_id": run.info.run_id}, timeout=60,
                                                   auth=("reader", password["reader"])).status_code}
                assert refused == {"no login": 401, "reader": 403}
                # and the run lives in PostgreSQL, still there
                with psycopg2.connect(postgres.uri().replace("+psycopg2", ""), password=password["database"]) \
                        as connection, connection.cursor() as cursor:
                    cursor.execute("SELECT status, lifecycle_stage FROM runs WHERE run_uuid = %s", (run.info.run_id,))
                    assert cursor.fetchone() == ("FINISHED", "active")
                connection.close()
    finally:
        left_behind = marked_processes(marker)
        kill_marked(marker)
    assert left_behind == [], [process.pid for process in left_behind]
