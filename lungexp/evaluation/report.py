"""One path from a predictions table to the run: its report (metrics, figures, pictures on CT) and the table.

The test stage of training (:class:`~lungexp.training.test_stage.TestReport`), ``python -m
lungexp.evaluate`` (:func:`~lungexp.inference.checkpoint_evaluation.evaluate_checkpoint`) and the pooled folds of a
cross-validation all report through :func:`report_split`, so a split is judged, pictured and logged the same way
wherever its predictions come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pytorch_lightning.loggers import Logger
from torch import nn

from lungexp.data.patches.normalization import HUWindow
from lungexp.evaluation.split_metrics import evaluate_predictions, patch_figures
from lungexp.evaluation.types import EvaluationOptions, EvaluationReport, EvaluationSettings
from lungexp.tracking.artifacts import log_figure, log_table


@dataclass(frozen=True)
class PatchPictures:
    """What the pictures on CT (worst-errors montage, Grad-CAM) are made from.

    Args:
        net: the network, as tested.
        patches: ``(N, C, z, y, x)`` HU patches indexed by ``cache_row`` (a patch cache's memory map).
        window: the HU window: grey levels of the pictures and the network's input normalisation.
        options: ``montage_k``, ``gradcam_samples``, ``gradcam_layer``.
    """

    net: nn.Module
    patches: np.ndarray
    window: HUWindow
    options: EvaluationOptions


def report_split(predictions: pd.DataFrame, settings: EvaluationSettings, loggers: Sequence[Logger], *,
                 prefix: str = "test/", title: str = "Test", artifact: str | None = None,
                 pictures: PatchPictures | None = None, figures: bool = True) -> EvaluationReport:
    """The report of ``predictions`` (:func:`~lungexp.evaluation.split_metrics.evaluate_predictions`), with the pictures
    on CT, its figures and the table itself (as ``artifact``, when given) logged to the MLflow loggers of
    ``loggers``.

    The metrics are returned, not logged: each caller logs them where its run keeps metrics (the test stage
    through Lightning, so they are also the trainer's callback metrics; a cross-validation with its folds'
    statistics). ``figures=False`` (DDP ranks > 0, a cross-validation without MLflow) makes no figures or pictures.
    """
    report = evaluate_predictions(predictions, settings, prefix=prefix, title=title, figures=figures)
    if figures and pictures is not None:
        report.figures.update(patch_figures(pictures.net, predictions, pictures.patches, pictures.window,
                                            pictures.options, settings.threshold))
    for path, figure in report.figures.items():
        log_figure(loggers, figure, path)
    if artifact is not None:
        log_table(loggers, predictions, artifact)
    return report
