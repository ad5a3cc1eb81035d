"""The test stage's report as a Lightning callback: the module scores the test patches, this reports them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from lungexp.data.loading.datamodule import NoduleDataModule
from lungexp.evaluation.head_report import report_target, target_predictions_table
from lungexp.evaluation.report import PatchPictures
from lungexp.evaluation.split_metrics import evaluation_settings
from lungexp.models.fusion import image_network
from lungexp.tracking.run_predictions import predictions_artifact
from lungexp.training.module import NoduleClassifier


class TestReport(Callback):
    """At the end of each test, the report of the module's test predictions
    (:func:`~lungexp.evaluation.head_report.report_target`: for one binary logit
    :func:`~lungexp.evaluation.report.report_split`'s): its metrics logged through the module (``test/auroc``,
    ...: the trainer's callback metrics), its figures, the pictures on CT and ``predictions/test_predictions.csv``
    logged to the trainer's loggers. The decision threshold is the module's, chosen on its own validation
    predictions; the ``eval`` options are those the module was built (and checkpointed) with.

    Args:
        datamodule: the datamodule tested: its sample table and patches, HU window and FROC reference.
    """

    __test__ = False  # a callback, not a pytest test class

    def __init__(self, datamodule: NoduleDataModule) -> None:
        self.datamodule = datamodule
        self.predictions: pd.DataFrame | None = None  # of the last test, joined with the sample table

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The module's validation predictions joined with the sample table before a checkpoint stores them
        (Lightning runs checkpoint callbacks after all others): their ``seriesuid`` is what
        ``eval.threshold=fp_per_scan@`` counts scans by."""
        if not isinstance(pl_module, NoduleClassifier):
            return
        validation = pl_module.validation_predictions
        cache = self.datamodule.cache
        if validation is not None and cache is not None and "seriesuid" not in validation:
            target = pl_module.target
            pl_module.validation_predictions = target_predictions_table(
                validation["cache_row"].to_numpy(), _probabilities(validation, pl_module), target, samples=cache.index)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, NoduleClassifier):
            raise TypeError(f"TestReport reports a NoduleClassifier's test, not a {type(pl_module).__name__}'s")
        scored = pl_module.predictions("test")  # a collective under DDP: every rank gets all patches
        cache = self.datamodule.cache
        assert cache is not None, "the datamodule's setup() opens its patch cache before any test"
        target = pl_module.target
        table = target_predictions_table(scored["cache_row"].to_numpy(), _probabilities(scored, pl_module), target,
                                         samples=cache.index)
        operating_point = pl_module.operating_point()
        predictions = self.predictions = operating_point.calibrate_table(table)
        options = pl_module.evaluation
        binary = target.primary.kind == "binary"  # the decision threshold is a binary primary head's
        settings = evaluation_settings(self.datamodule.options, self.datamodule.split_series("test"),
                                       operating_point.threshold(options.threshold) if binary else 0.5, options)
        # The pictures on CT show one logit's errors and saliency (model=tabular: no image to show).
        pictures = None if not self.datamodule.options.images or not pl_module.one_logit else PatchPictures(
            image_network(pl_module.net), self.datamodule.patch_cache.patches, self.datamodule.window, options)
        report = report_target(predictions, target, settings, trainer.loggers, artifact=predictions_artifact("test"),
                               pictures=pictures, figures=trainer.is_global_zero)
        pl_module.log_dict(report.metrics)


def _probabilities(table: pd.DataFrame, module: NoduleClassifier) -> np.ndarray:
    """The probability columns of a table of ``module``'s predictions: ``(N,)`` of one logit, else ``(N, columns)``."""
    if module.one_logit:
        return table["probability"].to_numpy()
    return table[list(module.target.probability_columns)].to_numpy()
