"""Helpers that log params, the resolved config, figures and tables to every MLflow logger in use.

They take the trainer's list of loggers and do nothing for other logger kinds, so the training
code stays the same with ``logger=[]`` (e.g. in quick tests) or another tracker.

Figures go to the artifact root (``plots/test/roc.png`` is stored as ``test_roc.png``): MLflow's
compare page lists only root-level artifacts and previews the selected one for every run side by side.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import Param, RunTag
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, MLFlowLogger

from lungexp.tracking.params import config_hash, group_choices, split_config

FIGURE_FOLDER = "plots"


def mlflow_loggers(loggers: Iterable[Logger]) -> list[MLFlowLogger]:
    return [logger for logger in loggers if isinstance(logger, MLFlowLogger)]


def mlflow_run_reference(loggers: Iterable[Logger]) -> dict[str, str]:
    """``run_id, experiment_id, experiment_name, tracking_uri`` of the first MLflow logger's run, or ``{}``
    without one (under DDP only rank 0 has a run)."""
    logger = next(iter(mlflow_loggers(loggers)), None)
    if logger is None or not logger.run_id:
        return {}
    client = logger.experiment
    return {"run_id": logger.run_id, "experiment_id": logger.experiment_id,
            "experiment_name": client.get_experiment(logger.experiment_id).name, "tracking_uri": client.tracking_uri}


def log_params(loggers: Iterable[Logger], params: Mapping[str, Any]) -> None:
    """Params as given (no re-flattening of lists), values as strings, in MLflow-sized batches."""
    entries = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in params.items()]
    for logger in mlflow_loggers(loggers):
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            logger.experiment.log_batch(logger.run_id, params=entries[start:start + MAX_PARAMS_TAGS_PER_BATCH])


def log_tags(loggers: Iterable[Logger], tags: Mapping[str, Any]) -> None:
    entries = [RunTag(key, str(value)) for key, value in tags.items()]
    for logger in mlflow_loggers(loggers):
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            logger.experiment.log_batch(logger.run_id, tags=entries[start:start + MAX_PARAMS_TAGS_PER_BATCH])


def log_config(loggers: Iterable[Logger], config: DictConfig) -> None:
    """The composed config: each group's option and every setting as params, paths as tags, the hash of
    the settings as ``config.hash``, and the whole resolved config as ``config.yaml``."""
    params, tags = split_config(config)
    log_params(loggers, {**group_choices(), **params})
    log_tags(loggers, {**tags, "config.hash": config_hash(params)})
    log_text(loggers, OmegaConf.to_yaml(config, resolve=True), "config.yaml")


def log_text(loggers: Iterable[Logger], text: str, artifact_file: str) -> None:
    for logger in mlflow_loggers(loggers):
        logger.experiment.log_text(logger.run_id, text, artifact_file)


def figure_artifact_name(artifact_file: str) -> str:
    """``plots/roc_curve.png`` -> ``roc_curve.png``, ``plots/test/roc.png`` -> ``test_roc.png``: figures
    live at the artifact root, where the compare page can show them side by side."""
    parts = PurePosixPath(artifact_file).parts
    if parts and parts[0] == FIGURE_FOLDER:
        parts = parts[1:]
    return "_".join(parts)


def log_figure(loggers: Iterable[Logger], figure: Figure, artifact_file: str) -> None:
    """Save a figure as a PNG artifact at the artifact root (see :func:`figure_artifact_name`)."""
    for logger in mlflow_loggers(loggers):
        logger.experiment.log_figure(logger.run_id, figure, figure_artifact_name(artifact_file))


def log_table(loggers: Iterable[Logger], table: pd.DataFrame, artifact_file: str) -> None:
    """A DataFrame as a CSV artifact (e.g. per-patch test predictions)."""
    targets = mlflow_loggers(loggers)
    if not targets:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        table.to_csv(path, index=False)
        folder = str(PurePosixPath(artifact_file).parent)
        for logger in targets:
            logger.experiment.log_artifact(logger.run_id, str(path), None if folder == "." else folder)
