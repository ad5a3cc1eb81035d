"""A Lightning callback for what MLflow needs beyond per-step metrics: the best value of the monitored
metric, the dataset and the best model."""

from __future__ import annotations

import copy
import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from lungexp.tracking.artifacts import mlflow_loggers
from lungexp.tracking.logger import RunLogger
from lungexp.tracking.provenance import log_dataset
from lungexp.tracking.runs import fluent_api_on, retried_after_lost_race

log = logging.getLogger(__name__)

MODEL_NAME = "model"
MODEL_URI_TAG = "model.uri"


def best_metric_name(monitor: str) -> str:
    """``val/auroc`` -> ``best/val_auroc``."""
    return "best/" + monitor.replace("/", "_")


class MLflowTracking(Callback):
    """Logs ``best/<monitor>`` and ``best/epoch`` after every validation (so the runs table and the
    compare page show the best value, not the last), the dataset as an MLflow input at fit start,
    and -- if a :class:`RunLogger` has ``log_model`` -- the best checkpoint as an MLflow model at the
    end of fit.

    Args:
        monitor: the metric to track (``optimized_metric``).
        mode: ``max`` or ``min``; taken from ``checkpoint`` when it monitors the same metric.
        checkpoint: the checkpoint callback that keeps the best epoch, whose best checkpoint is the model logged.
    """

    def __init__(self, monitor: str, mode: str = "max", checkpoint: ModelCheckpoint | None = None) -> None:
        self.monitor = monitor
        self.mode = checkpoint.mode if checkpoint is not None and checkpoint.monitor == monitor else mode
        self.checkpoint = checkpoint
        self.best: float | None = None
        self.best_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning when fit starts, undeclared
        for logger in mlflow_loggers(trainer.loggers):
            # The jobs of a sweep start at once and log the same dataset of their experiment.
            retried_after_lost_race(partial(log_dataset, logger.experiment, _run_id(logger), datamodule), "the dataset")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metric = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or metric is None or math.isnan(float(metric)):
            return
        value = float(metric)
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best, self.best_epoch = value, trainer.current_epoch
        assert self.best is not None and self.best_epoch is not None  # set together, at the latest just above
        for logger in mlflow_loggers(trainer.loggers):
            logger.log_metrics({best_metric_name(self.monitor): round(self.best, 6), "best/epoch": self.best_epoch},
                               step=trainer.global_step)  # rounded: the runs table prints every digit

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict["best"], state_dict["best_epoch"]

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        targets = [lg for lg in mlflow_loggers(trainer.loggers) if isinstance(lg, RunLogger) and lg.log_best_model]
        checkpoint = self.checkpoint.best_model_path if self.checkpoint is not None else ""
        if not targets or not checkpoint:
            return
        model = _load_best(pl_module, checkpoint)
        example = _input_example(trainer)
        for logger in targets:
            log_model(model, example, _run_id(logger), logger.experiment)


def _run_id(logger: MLFlowLogger) -> str:
    """The logger's run id: Lightning types it optional, but opening the experiment (which it does) sets it."""
    run_id = logger.run_id
    assert run_id is not None
    return run_id


def _load_best(pl_module: pl.LightningModule, checkpoint: str) -> pl.LightningModule:
    """A CPU copy of the module with the weights of ``checkpoint``, in eval mode."""
    model = copy.deepcopy(pl_module).cpu()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    return model.eval()


def _input_example(trainer: pl.Trainer) -> torch.Tensor:
    """One validation patch, ``(1, C, D, H, W)``: documents the input and lets MLflow infer the signature."""
    loader = trainer.val_dataloaders
    if loader is None:
        raise RuntimeError("no validation dataloader to take the logged model's input example from")
    batch = next(iter(loader[0] if isinstance(loader, list) else loader))
    return batch["image"][:1].float().cpu()


def log_model(model: torch.nn.Module, example: torch.Tensor, run_id: str, client: MlflowClient) -> str:
    """``model`` as MLflow model ``model`` of ``run_id``, with signature, input example and lungexp's
    source (so ``mlflow.pytorch.load_model`` works without lungexp installed); its URI (``models:/...``)
    is returned and tagged on the run as ``model.uri``."""
    import mlflow.pytorch
    from mlflow.models import infer_signature


    with torch.no_grad():
        output = model(example).numpy()
    # Created here, in the run's experiment: MLflow would put it in the active experiment (the store's Default,
    # whose artifacts live in ./mlruns of the folder that created the store), not the run's.
    run = client.get_run(run_id)
    logged = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                        params=run.data.params)
    with fluent_api_on(client):
        info = mlflow.pytorch.log_model(
            model, name=MODEL_NAME, model_id=logged.model_id, run_id=run_id, input_example=example.numpy(),
            signature=infer_signature(example.numpy(), output),
            code_paths=[str(Path(__file__).parents[1])], pip_requirements=_requirements(),
            serialization_format="pickle",  # the module itself (any batch size); "pt2" would fix the example's shape
        )
    client.set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    log.info("Logged the best checkpoint as MLflow model %s (mlflow.pytorch.load_model)", info.model_uri)
    return info.model_uri


def _requirements() -> list[str]:
    """Pinned requirements of the model (inferring them would load the model in a subprocess)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "pytorch-lightning", "torchmetrics", "numpy")]
