"""No password in a URI reaches any output: every entry point refuses one, whatever its key, scheme or spelling,
before Hydra writes anything (:mod:`lungexp.tracking.credentials`)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lungexp.config.check import PRIMARY
from lungexp.tracking.credentials import RefusePasswords, check_no_passwords, masked, passwords_in
from lungexp.tracking.server import is_tracking_server
from lungexp.utils.dictconfig import CONFIG_DIR
from lungexp.utils.errors import ConfigError
from tests.helpers.cli import run_entry_point
from tests.helpers.fork_server import ForkServer

SECRET = "s3cr3t-pw"
# A URI key of each primary config.
URI_KEYS = {"config": "paths.mlflow_uri", "evaluate": "logger.mlflow.tracking_uri", "predict": "tracking_uri",
            "register": "tracking_uri"}


def composed(config_name: str, overrides: list[str]):
    """``conf/<config_name>.yaml`` with its Hydra node, as Hydra hands it to the callbacks."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("text", [
    f"HTTP://alice:{SECRET}@host:5000", f"Https://alice:{SECRET}@host", f"http://:{SECRET}@host",
    f"postgresql://u:{SECRET}@host/db", f"[sqlite:///a.db,http://u:{SECRET}@host]", f"http://alice%3A{SECRET}@host",
    f"see HTTP://alice:{SECRET}@host] (an unbalanced bracket)",
])
def test_a_password_is_found_in_any_spelling_and_never_shown(text: str) -> None:
    (uri,) = passwords_in(text)
    assert SECRET not in masked(uri) and "…@host" in masked(uri)


@pytest.mark.parametrize("text", ["sqlite:///x/mlflow.db", "http://alice@host:5000", "https://host/a?mail=a:b@c",
                                  "s3://bucket/a:b@c", "/data/a:b@c"])
def test_uris_without_a_password_pass(text: str) -> None:
    assert passwords_in(text) == []


def test_a_tracking_server_is_known_in_any_case() -> None:
    assert is_tracking_server("HTTP://host:5000") and is_tracking_server("Https://host")
    assert not is_tracking_server("sqlite:///mlflow.db")


@pytest.mark.parametrize("start", ["on_run_start", "on_multirun_start"])
@pytest.mark.parametrize("config_name", sorted(set(PRIMARY.values())))
def test_every_entry_point_refuses_a_password_in_its_first_callback(config_name: str, start: str,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """First of ``hydra.callbacks``: Hydra calls it before the output folder, and before the sweep callback
    creates an MLflow parent run."""
    key = URI_KEYS[config_name]
    cfg = composed(config_name, [f"{key}=HTTP://alice:{SECRET}@host:5000"])
    first = hydra.utils.instantiate(next(iter(cfg.hydra.callbacks.values())))
    assert isinstance(first, RefusePasswords)
    with pytest.raises(SystemExit) as stop:
        getattr(first, start)(config=cfg)
    assert stop.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {key} (on the command line) holds a password (HTTP://…@host:5000)")
    assert error.count("\n") == 1 and SECRET not in error and "MLFLOW_TRACKING_PASSWORD" in error


@pytest.mark.parametrize("overrides, variable, named", [
    ([f"data.root=postgresql://u:{SECRET}@host/db"], None, "data.root (on the command line)"),
    ([], ("MLFLOW_TRACKING_URI", f"https://:{SECRET}@host"), "the environment variable MLFLOW_TRACKING_URI"),
    ([], ("LUNGEXP_ROOT", f"http://u:{SECRET}@host"), "paths.root_dir (as resolved from ${oc.env:LUNGEXP_ROOT"),
], ids=["any-key", "mlflow-variable", "interpolated-variable"])
def test_a_password_from_any_source_is_named_by_where_it_came_from(
        overrides: list[str], variable: tuple[str, str] | None, named: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if variable is not None:
        monkeypatch.setenv(*variable)
    with pytest.raises(ConfigError) as error:
        check_no_passwords(composed("config", overrides))
    assert str(error.value).startswith(named) and SECRET not in str(error.value)


def test_a_run_with_a_password_writes_logs_and_prints_nothing(tmp_path: Path, fork_server: ForkServer) -> None:
    """The real order of Hydra's steps: no .hydra/config.yaml, no MLflow store, no checkpoint, no log."""
    proc = run_entry_point("run", [f"paths.mlflow_uri=HTTP://alice:{SECRET}@127.0.0.1:9"], tmp_path, timeout=120,
                           fork_server=fork_server)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: paths.mlflow_uri (on the command line) holds a password")
    assert proc.stderr.count("\n") == 1 and SECRET not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []  # LUNGEXP_ROOT: outputs and the default MLflow store go under it
