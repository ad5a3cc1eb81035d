"""The ``logger`` config group's loggers, built once their tracking store is known to open.

Opening the tracking store happens here first, so a damaged ``mlflow.db``, or a tracking server that
refuses this user, is named before any slow work instead of failing deep inside the logger; opening it
also ends the stale runs of the experiment (:mod:`lungexp.tracking.stale_runs`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import get_object
from mlflow import MlflowClient
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger, MLFlowLogger
from pytorch_lightning.loggers.logger import DummyLogger
from pytorch_lightning.utilities import rank_zero_only

from lungexp.tracking.server import (
    access_error,
    check_no_credentials_in,
    check_server_access,
    is_refusal,
    is_tracking_server,
)
from lungexp.tracking.stale_runs import end_stale_runs, process_tags
from lungexp.utils.dictconfig import to_dict
from lungexp.utils.errors import LungexpError


class TrackingStoreError(LungexpError):
    """The MLflow tracking store cannot be opened or read."""


def instantiate_loggers(config: DictConfig | None, run_kwargs: Mapping[str, Any] | None = None) -> list[Logger]:
    """The ``logger`` group's loggers; for each MLflow one, first :func:`open_tracking_store`, then tag the
    run it will create with this process (:func:`process_tags`); on DDP ranks > 0 a no-op stand-in.

    MLflow's client connects when the logger is built, so the store is checked before that. MLflow loggers
    also get ``run_kwargs`` (run name, tags, run id) where their config leaves them unset.
    """
    run_kwargs = run_kwargs or {}
    loggers = []
    for node in (config or {}).values():
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        if not _is_mlflow_logger(node):
            loggers.append(hydra.utils.instantiate(node, _convert_="partial"))
            continue
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]  # Lightning sets it on the function
            # DDP ranks > 0 log nothing (Lightning's loggers act on rank 0 only), and they must not even open
            # the store: processes that start together would each create a new SQLite store's tables.
            loggers.append(DummyLogger())
            continue
        if node.get("tracking_uri"):
            open_tracking_store(node.tracking_uri, node.experiment_name)
        extra = {key: value for key, value in run_kwargs.items() if key != "tags" and node.get(key) is None}
        configured = node.get("tags")  # the config's own tags win over the run's on the same key
        extra["tags"] = {**run_kwargs.get("tags", {}),
                         **(to_dict(configured, resolve=True) if configured else {})}
        loggers.append(hydra.utils.instantiate(node, **extra, _convert_="partial"))
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            logger.tags = {**(logger.tags or {}), **process_tags()}
    return loggers


def mlflow_logger_config(cfg: DictConfig) -> DictConfig | None:
    """The config node of the first MLflow logger of ``cfg.logger`` (None if the run logs to no MLflow)."""
    for node in (cfg.get("logger") or {}).values():
        if isinstance(node, DictConfig) and _is_mlflow_logger(node):
            return node
    return None


def _is_mlflow_logger(node: DictConfig) -> bool:
    target = get_object(node["_target_"]) if isinstance(node.get("_target_"), str) else None
    return isinstance(target, type) and issubclass(target, MLFlowLogger)


def open_tracking_store(uri: str, experiment_name: str) -> None:
    """Open the store at ``uri`` (naming it if that fails), check that a tracking server lets this user
    write there (:func:`~lungexp.tracking.server.check_server_access`) and end the stale runs of
    ``experiment_name``. A password in ``uri`` (any scheme) is refused first: every message below names ``uri``."""
    check_no_credentials_in(uri)
    try:
        client = MlflowClient(uri)
        if is_tracking_server(uri):
            check_server_access(client, experiment_name)
        end_stale_runs(client, experiment_name, ended_by="when a new run started")
    except LungexpError:
        raise
    except Exception as error:  # noqa: BLE001  SQLAlchemy, sqlite3 and MLflow all raise their own types
        if is_refusal(error):  # e.g. a stale run of someone else's that this user may not end
            raise access_error(uri, error.get_http_status_code(), experiment_name) from None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if is_tracking_server(uri):
            raise TrackingStoreError(f"{uri}: the MLflow tracking server does not answer ({reason}); is it running "
                                     "and reachable from here? Check the address (logger.mlflow.tracking_uri, "
                                     "MLFLOW_TRACKING_URI)") from None
        where = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri
        if uri.startswith("sqlite:///") and _is_sound_sqlite(Path(where)):
            # Typically two first runs creating the store at once: one of them loses the race on the
            # schema migrations ("table ... already exists"), and the file is fine.
            raise TrackingStoreError(
                f"{where}: the MLflow tracking store cannot be opened ({reason}), but the file is a sound SQLite "
                "database: most likely another run is creating or upgrading the store at this moment; wait until "
                "that run has started, then retry (if it keeps failing, the file is no MLflow store: point "
                "paths.mlflow_uri somewhere else)"
            ) from None
        raise TrackingStoreError(
            f"{where}: the MLflow tracking store cannot be opened ({reason}); if the file is damaged, move it "
            "aside (a new store is created) or point paths.mlflow_uri somewhere else"
        ) from None


def _is_sound_sqlite(path: Path) -> bool:
    """Whether ``path`` is an undamaged SQLite database (waiting a while for another writer's lock)."""
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)) as db:
            return db.execute("PRAGMA quick_check").fetchone() == ("ok",)
    except sqlite3.Error:
        return False
