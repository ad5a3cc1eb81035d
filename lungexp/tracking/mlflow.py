"""Helpers that log params, the resolved config, figures and tables to every MLflow logger in use.

They take the trainer's list of loggers and do nothing for other logger kinds, so the training
code stays the same with ``logger=[]`` (e.g. in quick tests) or another tracker.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, MLFlowLogger


def mlflow_loggers(loggers: Iterable[Logger]) -> list[MLFlowLogger]:
    return [logger for logger in loggers if isinstance(logger, MLFlowLogger)]


def flatten_config(config: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"model.net.depth": 18, ...}`` (lists stay whole, as their string form)."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def log_params(loggers: Iterable[Logger], params: Mapping[str, Any]) -> None:
    for logger in mlflow_loggers(loggers):
        logger.log_hyperparams(dict(params))


def log_config(loggers: Iterable[Logger], config: DictConfig) -> None:
    """The whole composed config: flattened as params, and as ``config.yaml`` artifact."""
    log_params(loggers, flatten_config(config))
    log_text(loggers, OmegaConf.to_yaml(config, resolve=True), "config.yaml")


def log_text(loggers: Iterable[Logger], text: str, artifact_file: str) -> None:
    for logger in mlflow_loggers(loggers):
        logger.experiment.log_text(logger.run_id, text, artifact_file)


def log_figure(loggers: Iterable[Logger], figure: Figure, artifact_file: str) -> None:
    """Save a figure as a PNG artifact, then close it (figures are large and plt keeps them alive)."""
    for logger in mlflow_loggers(loggers):
        logger.experiment.log_figure(logger.run_id, figure, artifact_file)
    plt.close(figure)


def log_table(loggers: Iterable[Logger], table: pd.DataFrame, artifact_file: str) -> None:
    """A DataFrame as a CSV artifact (e.g. per-patch test predictions)."""
    targets = mlflow_loggers(loggers)
    if not targets:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        table.to_csv(path, index=False)
        for logger in targets:
            artifact_dir = str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_dir)
