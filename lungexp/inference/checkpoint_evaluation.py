"""``evaluate``: a trained checkpoint judged on a split of a dataset, logged as a new MLflow run.

The model and its preprocessing come from the checkpoint; the data and ``eval`` settings are those
stored with it (the training run's) unless the command line overrides them (``data=luna16
data.root=...``, ``data.root=...`` alone, ``eval.threshold=...``). The metrics and figures are made
by the same report as the training test stage, with the decision threshold chosen on the
checkpoint's own validation predictions, so ``split=test`` reproduces the training run's test metrics. Where the
stored groups meet the command line, and become typed options, is :mod:`lungexp.config.checkpoint_groups`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from lungexp.data.loading.datamodule import NoduleDataModule
from lungexp.data.options import DataOptions
from lungexp.evaluation.console_summary import metric_lines, print_summary
from lungexp.evaluation.head_report import is_one_logit, report_target, target_predictions_table
from lungexp.evaluation.operating_point import with_calibrated
from lungexp.evaluation.report import PatchPictures
from lungexp.evaluation.split_metrics import evaluation_settings
from lungexp.evaluation.types import EvaluationOptions, EvaluationResult
from lungexp.inference.ensemble import Ensemble
from lungexp.models.fusion import image_network
from lungexp.tracking.artifacts import log_config, mlflow_loggers
from lungexp.tracking.logger_setup import instantiate_loggers
from lungexp.tracking.provenance import git_tags
from lungexp.tracking.run_predictions import predictions_artifact
from lungexp.tracking.runs import run_name

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "all")
TRAINING_RUN_TAG = "lungexp.training_run_id"


@dataclass(frozen=True)
class CheckpointEvaluation:
    """What ``evaluate`` judges, checked (:func:`lungexp.config.checkpoint_groups.checkpoint_evaluation`).

    Args:
        config: the command's config with the effective ``data`` and ``eval`` groups (what gets logged).
        predictor: the checkpoint, or the ensemble of them.
        split: ``test``, ``val`` or ``all`` (see :data:`SPLITS`).
        data: the data to judge it on: the checkpoint's, with the command line's changes.
        evaluation: the ``eval`` options: the checkpoint's, with the command line's changes.
    """

    config: DictConfig
    predictor: Ensemble
    split: str
    data: DataOptions
    evaluation: EvaluationOptions


def evaluate_checkpoint(run: CheckpointEvaluation) -> EvaluationResult:
    """Evaluate ``run.predictor`` on ``run.split`` of ``run.data`` and log the report to a new MLflow run."""
    cfg, predictor, split, options = run.config, run.predictor, run.split, run.evaluation
    target = predictor.recipe.targets  # what the checkpoint's outputs mean: its heads read the labels CSV
    datamodule = NoduleDataModule.from_options(run.data, target=target)
    datamodule.prepare_data()
    if split == "all":
        datamodule.setup_all()
    else:
        datamodule.setup("test")
    predictor.calibrate(options.calibration, key="eval.calibration")
    predictions = _predict(predictor, datamodule, split)
    threshold = predictor.decision_threshold(options.threshold) if target.primary.kind == "binary" else 0.5
    settings = evaluation_settings(datamodule.options, datamodule.split_series(split), threshold, options)

    training_run = cfg.cv_run or predictor.recipe.mlflow.get("run_id")
    loggers = instantiate_loggers(cfg.get("logger"), {"run_name": run_name(cfg), "tags": git_tags()})
    log_config(loggers, cfg)
    # The pictures on CT show one logit's errors and saliency (model=tabular: no image to show).
    pictures = None if not datamodule.options.images or not is_one_logit(target) else PatchPictures(
        image_network(predictor.net), datamodule.patch_cache.patches, datamodule.window, options)
    report = report_target(predictions, target, settings, loggers, prefix=f"{split}/", title=split.capitalize(),
                           artifact=predictions_artifact(split), pictures=pictures)
    for logger in mlflow_loggers(loggers):
        logger.experiment.set_tag(logger.run_id, TRAINING_RUN_TAG, training_run or "unknown")
        logger.log_metrics(report.metrics)
    run_id = None
    for logger in mlflow_loggers(loggers):
        run_id = logger.run_id
        logger.finalize("success")
    return EvaluationResult(predictor.description, split, report.metrics, predictions, run_id, training_run)


def print_evaluation(result: EvaluationResult) -> None:
    """The console summary of an evaluation: the split, every metric and both MLflow runs."""
    data = result.predictions
    positives = f" ({int(data['label'].sum())} positive)" if "probability" in data else ""  # a binary primary head
    lines = [f"  on split '{result.split}': {len(data)} patches{positives} from {data['seriesuid'].nunique()} series", *metric_lines(result.metrics, 34),
             f"  training MLflow run id   {result.training_run_id or '(none recorded)'}"]
    if result.mlflow_run_id:
        lines.append(f"  MLflow run id            {result.mlflow_run_id}")
    print_summary(f"Evaluation of {result.checkpoint}", lines)


def _predict(predictor: Ensemble, datamodule: NoduleDataModule, split: str) -> pd.DataFrame:
    """Per-patch probabilities of a split, joined with the sample table as the training test stage does."""
    dataset = datamodule.datasets[split]
    loader = DataLoader(dataset, batch_size=datamodule.options.batch_size, num_workers=datamodule.options.num_workers)
    plain, calibrated = predictor.scores(loader)
    table = target_predictions_table(dataset.rows, plain, datamodule.target, samples=datamodule.opened_cache.index)
    return table if calibrated is None else with_calibrated(table, calibrated, datamodule.target.primary)

