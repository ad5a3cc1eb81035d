"""The LightningModule: a binary nodule classifier around any network from ``lungexp.models``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.types import OptimizerLRScheduler
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.utilities.distributed import gather_all_tensors

from lungexp.data.labels.covariates import COVARIATE_STARTS, rating_covariates
from lungexp.data.labels.targets import PRIMARY_NAME, TargetOptions
from lungexp.data.names import COVARIATES_KEY, IMAGE_KEY, INDEX_KEY, LABEL_KEY
from lungexp.evaluation.head_report import (
    is_one_logit,
    monitored_head_metrics,
    target_predictions_table,
    validation_head_metrics,
)
from lungexp.evaluation.operating_point import OperatingPoint
from lungexp.evaluation.types import EvaluationOptions
from lungexp.metrics.classification import classification_metrics
from lungexp.models.complexity import model_summary
from lungexp.models.fusion import CovariateFusion, covariate_scaler, network_inputs, with_covariates
from lungexp.models.heads import head_outputs, target_probabilities
from lungexp.models.pretrained import PretrainedReport, load_pretrained
from lungexp.models.tabular import TabularNet
from lungexp.models.tta import tta_probabilities
from lungexp.tracking.artifacts import log_params, log_tags
from lungexp.training.finetuning import freeze_batchnorm, parameter_groups
from lungexp.training.lbfgs import fitted_logistic_regression
from lungexp.training.losses import MultitaskLoss, target_class_weights, target_loss
from lungexp.utils.errors import ArgumentError

log = logging.getLogger(__name__)

VALIDATION_PREDICTIONS = "validation_predictions"  # checkpoint entry: what the decision threshold is chosen on
CALIBRATION = "calibration"  # checkpoint entry: the eval.calibration fitted on them (absent for none)
RATING_COVARIATES_TAG = "covariates.ratings"  # the readers' ratings a model takes (model.allow_rating_covariates)


def stored_validation_predictions(checkpoint: Mapping[str, Any]) -> pd.DataFrame | None:
    """The ``label, probability`` (and, when recorded, ``seriesuid``) validation table a checkpoint carries (a
    target of several heads: their label and probability columns)."""
    stored = checkpoint.get(VALIDATION_PREDICTIONS)
    return None if stored is None else pd.DataFrame(
        {column: values.numpy() if isinstance(values, torch.Tensor) else values for column, values in stored.items()})


PROGRESS_BAR = ("val/auroc",)  # the validation metrics the epoch's progress bar shows beside the training loss


class NoduleClassifier(pl.LightningModule):
    """Trains ``net`` (one logit per patch) with a binary loss (BCE unless ``loss`` says otherwise) and
    reports the shared metric set; or, for another ``target``, its heads with theirs.

    Args:
        net: the network; its classifier must be ``net.head`` (see ``lungexp.models``).
        optimizer: partial optimizer (``_partial_: true`` in config) taking ``params``; its learning rate
            (configured, or the optimizer's default) is the backbone's, the head's is scaled by
            ``finetune.head_lr_mult``.
        scheduler: optional partial LR scheduler taking ``optimizer``, stepped per epoch.
        loss: partial loss taking ``pos_weight`` (default ``BCEWithLogitsLoss``; see
            :mod:`lungexp.training.losses` for focal loss).
        pos_weight: weight of positives in the loss: ``None``, a number, or ``"auto"`` (neg/pos of the
            training split).
        pretrained: ``{path, format, sha256}``: weights loaded into ``net`` before training.
        finetune: ``{freeze_backbone_epochs, freeze_bn, head_lr_mult}``; the freezing itself is done
            by the :class:`~lungexp.training.finetuning.BackboneFreeze` callback.
        evaluation: the ``eval`` options: how the test stage judges and pictures the model (saved with its
            checkpoints as the ``eval`` group, :meth:`~lungexp.evaluation.types.EvaluationOptions.to_config`);
            None: the defaults.
        augmentation: applied to each training batch on its device, after the HU window
            (:mod:`lungexp.data.loading.batch_augmentation`, ``aug=batch_light|batch_strong``); never to validation or test.
        compile: ``torch.compile`` the network (in place: its weights keep their names in checkpoints).
        channels_last: the network and its input batches in the channels-last-3D memory format.
        covariates: columns of the labels CSV the model also reads (batches carry them as ``covariates``):
            ``net`` becomes a :class:`~lungexp.models.fusion.CovariateFusion` whose standardisation is fitted on
            the training split when a fit starts; empty: ``net`` alone.
        allow_rating_covariates: ``covariates`` may name the readers' ratings (checked, and warned about, where
            the config is checked: :func:`lungexp.config.check.check`); a run that uses them is tagged
            ``covariates.ratings``.
        images: whether ``net`` reads the image patch; false (``model=tabular``): batches carry no image and ``net``
            (a :class:`~lungexp.models.tabular.TabularNet`) reads the covariates alone, its training loss plus its
            L2 :meth:`~lungexp.models.tabular.TabularNet.penalty`.
        covariate_start: where a covariate model's head starts when a fit starts: ``fitted``, the logistic
            regression of the training labels on the covariates with the image features' weights at 0
            (:meth:`~lungexp.models.fusion.CovariateFusion.start_from`), or ``random`` (the head's own init).
        target: what each sample is (``target.*``; None: one binary logit). ``net`` has one output per logit
            of its heads (:func:`~lungexp.models.heads.head_outputs`, set by :func:`lungexp.config.check.check`);
            a target other than one binary head is trained with :func:`~lungexp.training.losses.target_loss`
            (``loss`` and ``pos_weight`` weigh a binary primary head only) and validated with each head's metric
            set (:func:`~lungexp.evaluation.head_report.validation_head_metrics`: ``val/qwk``, ``val/texture/f1_macro``).

    Each checkpoint carries the validation predictions of its own weights, so the test of the best
    checkpoint chooses its decision threshold on that checkpoint's validation, not the last epoch's. The test
    stage only scores patches; :class:`~lungexp.training.test_stage.TestReport` reports them.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        loss: Callable[..., nn.Module] | None = None,
        pos_weight: float | str | None = None,
        pretrained: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
        evaluation: EvaluationOptions | None = None,
        augmentation: nn.Module | None = None,
        compile: bool = False,
        channels_last: bool = False,
        covariates: Sequence[str] = (),
        allow_rating_covariates: bool = False,
        images: bool = True,
        covariate_start: str = "fitted",
        target: TargetOptions | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "loss", "augmentation",
                                                        "evaluation", "target"])
        self.target = target or TargetOptions()  # checkpoints record it in their recipe (ModelRecipe.target)
        self.one_logit = is_one_logit(self.target)
        self.outputs = [head_outputs(head.kind, head.num_classes) for head in self.target.heads]
        self.hparams["covariates"] = list(covariates)  # plain strings, as weights_only reads them
        self.evaluation = evaluation or EvaluationOptions()
        # Plain values, as checkpoints have always held it: torch.load(weights_only=True) reads them back.
        self.hparams["evaluation"] = self.evaluation.to_config()
        self.augmentation = augmentation
        self._net_compiled = False
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.finetune = {"freeze_backbone_epochs": 0, "freeze_bn": False, "head_lr_mult": 1.0, **(finetune or {})}
        self.pretrained_report: PretrainedReport | None = None
        pretrained = pretrained or {}
        if pretrained.get("path"):  # into the image network, before a covariate model wraps it
            self.pretrained_report = load_pretrained(net, pretrained["path"], format=pretrained.get("format", "auto"),
                                                     sha256=pretrained.get("sha256"))
        self.net = with_covariates(net, covariates, images)
        if covariate_start not in COVARIATE_STARTS:
            raise ArgumentError(f"covariate_start={covariate_start!r} must be one of {', '.join(COVARIATE_STARTS)}")
        self._training_samples = 1  # of the fit's training split, set in setup(): TabularNet's penalty
        binary = self.target.primary.kind == "binary"  # model.loss, weighted by pos_weight in setup()
        # One binary head: that loss itself; class weights are filled in setup().
        self.criterion = target_loss(self.target, {head.name: torch.ones(head.num_classes) for head in self.target.heads
                                                   if head.class_weights is not None},
                                     primary_loss=(loss or nn.BCEWithLogitsLoss)(pos_weight=torch.ones(())) if binary
                                     else None)
        self.val_metrics = classification_metrics("val/")
        self.mean_loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.validation_predictions: pd.DataFrame | None = None  # of the current weights
        self._said_classes_left_out = False  # validation's macro AUROC without a class the split lacks: said once
        self._complexity: dict[int, dict[str, int | float]] = {}  # complexity() by patch size
        self._outputs: dict[str, list[tuple[torch.Tensor, ...]]] = {"val": [], "test": []}

    @staticmethod
    def monitored_metrics(target: TargetOptions | None = None) -> dict[str, str]:
        """What validation logs for ``target`` (None: one binary logit), each with the direction that is better
        (``max`` or ``min``): the values ``optimized_metric`` and the callbacks' ``monitor``/``mode`` may take."""
        if target is not None and not is_one_logit(target):
            return {**monitored_head_metrics(target), "val/loss": "min"}
        metrics = classification_metrics("val/").items()  # torchmetrics says which way each improves
        return {**{name: "min" if metric.higher_is_better is False else "max" for name, metric in metrics},
                "val/loss": "min"}

    def forward(self, image: torch.Tensor | None, covariates: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.net(*network_inputs(image, covariates))
        return logits.squeeze(-1) if self.one_logit else logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The probabilities of :meth:`forward`'s logits: ``(B,)`` P(positive) of one logit, else ``(B, columns)``
        of every head (:func:`~lungexp.models.heads.target_probabilities`, the predictions table's columns)."""
        if self.one_logit:
            return torch.sigmoid(logits)
        return target_probabilities(logits, [head.kind for head in self.target.heads], self.outputs)

    def configure_model(self) -> None:
        # Called by every stage of the trainer; the network is converted and compiled once.
        if self.hparams["channels_last"]:
            self.net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # torch's overloads omit it
        if self.hparams["compile"] and not self._net_compiled:
            self.net.compile()
            self._net_compiled = True

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        if IMAGE_KEY not in batch:  # model=tabular
            return batch
        image = batch[IMAGE_KEY]
        if self.augmentation is not None and self.trainer.training:
            image = self.augmentation(image)
        if self.hparams["channels_last"]:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return {**batch, IMAGE_KEY: image}

    def on_train_epoch_start(self) -> None:
        # Runs after the callbacks' hooks (so also after BackboneFreeze unfreezes); Lightning restores
        # these modes after each validation loop.
        if self.finetune["freeze_bn"]:
            freeze_batchnorm(self.net)

    def head_losses(self) -> dict[str, nn.Module]:
        """Each head's loss by head name (one head: the criterion itself)."""
        if isinstance(self.criterion, MultitaskLoss):
            return dict(zip(self.criterion.names, self.criterion.losses, strict=True))
        return {PRIMARY_NAME: self.criterion}

    def setup(self, stage: str) -> None:
        weight = self.hparams["pos_weight"]
        if weight == "auto":
            datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning, undeclared
            negatives, positives = datamodule.train_class_counts
            weight = negatives / max(positives, 1)
            log.info("pos_weight=auto: %.2f (%d negatives / %d positives)", weight, negatives, positives)
        if weight is not None:  # the buffer made in __init__
            cast(torch.Tensor, self.head_losses()[PRIMARY_NAME].pos_weight).fill_(float(weight))
        if stage == "fit" and any(head.class_weights is not None for head in self.target.heads):
            datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning, undeclared
            train = datamodule.opened_cache.index.iloc[datamodule.datasets["train"].rows]
            losses = self.head_losses()
            for name, weights in target_class_weights(self.target, train).items():
                if weights is not None:  # the cross-entropy's buffer made in __init__
                    cast(torch.Tensor, losses[name].weight).copy_(weights)
        scaler = covariate_scaler(self.net)
        if stage == "fit" and scaler is not None:
            # Once per fit, from the training split only; a resumed fit then restores the checkpoint's (the same).
            datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning, undeclared
            scaler.fit(datamodule.train_covariates, self.hparams["covariates"])
            self._training_samples = len(datamodule.train_covariates)
            if isinstance(self.net, CovariateFusion) and self.hparams["covariate_start"] == "fitted":
                self._start_from_covariates(scaler(torch.as_tensor(datamodule.train_covariates)).cpu(),
                                            datamodule.train_labels)

    def _start_from_covariates(self, covariates: torch.Tensor, labels: np.ndarray) -> None:
        """``covariate_start=fitted``: the fusion head starts as the logistic regression on the covariates; that
        is one binary logit's model, so the head of any other target starts from its own init (said once)."""
        if len(self.target.heads) != 1 or self.target.primary.kind != "binary":
            log.info("covariate_start=fitted starts one binary logit; the %s target's head starts from its own init",
                     self.target.kind)
            return
        cast(CovariateFusion, self.net).start_from(fitted_logistic_regression(covariates, torch.as_tensor(labels)))

    def complexity(self, patch: int = 32) -> dict[str, int | float]:
        """The network's size and compute for one sample of ``patch``³ voxels and its covariates
        (:func:`~lungexp.models.complexity.model_summary`: ``params`` and ``flops_<patch>``, or ``flops`` for a model
        of covariates alone), counted once per patch size: at 32³ logged as ``model_info.*`` (comparable across
        runs), at the run's patch size shown in the model summary
        (:class:`~lungexp.training.network_summary.NetworkSummary`)."""
        if patch not in self._complexity:
            stem_conv = cast(nn.Conv3d | None, getattr(self.net, "stem_conv", None))  # every image network has one
            self._complexity[patch] = model_summary(self.net, stem_conv.in_channels if stem_conv is not None else None,
                                                    patch=patch, covariates=len(self.hparams["covariates"]))
        return self._complexity[patch]

    def network_flops(self, patch: int) -> int:
        """The network's FLOPs for one sample of ``patch``³ voxels (a model of covariates alone: whatever the
        patch)."""
        return int(next(value for name, value in self.complexity(patch).items() if name.startswith("flops")))

    def on_fit_start(self) -> None:
        covariates = self.hparams["covariates"]
        params: dict[str, Any] = {f"model_info.{k}": v for k, v in self.complexity().items()}
        if self.pretrained_report is not None:  # the size and FLOPs are in the model summary the fit prints
            pretrained = self.pretrained_report.as_params()
            log.info("Pretrained weights: %s", ", ".join(f"{k}={v}" for k, v in pretrained.items()))
            params.update(pretrained)
        log_params(self.trainer.loggers, {**params, **self.covariate_statistics()})
        ratings = rating_covariates(covariates)
        if ratings:
            log_tags(self.trainer.loggers, {RATING_COVARIATES_TAG: ",".join(ratings)})

    def covariate_statistics(self) -> dict[str, float]:
        """``covariates.<name>.mean`` and ``.std``: the training statistics the model standardises its covariates
        with (none without covariates)."""
        scaler = covariate_scaler(self.net)
        if scaler is None:
            return {}
        names = self.hparams["covariates"]
        return {**{f"covariates.{name}.mean": value for name, value in zip(names, scaler.mean.tolist(), strict=True)},
                **{f"covariates.{name}.std": value for name, value in zip(names, scaler.std.tolist(), strict=True)}}

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits.float(), labels if self.one_logit else labels.long())

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch.get(IMAGE_KEY), batch.get(COVARIATES_KEY)), batch[LABEL_KEY])
        if isinstance(self.net, TabularNet):
            loss = loss + self.net.penalty(self._training_samples)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=len(batch[LABEL_KEY]))
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch.get(IMAGE_KEY), batch.get(COVARIATES_KEY)).float()
        # A torchmetrics mean, exact across DDP ranks holding unequal numbers of patches (Lightning's sync_dist
        # averages the ranks' patch counts as integers, rounding 11.5 down to 11).
        mean_loss = cast(MeanMetric, self.mean_loss[stage])  # nn.ModuleDict's items are typed as nn.Module
        mean_loss.update(self._loss(logits, batch[LABEL_KEY]), weight=len(batch[LABEL_KEY]))
        self.log(f"{stage}/loss", mean_loss, on_epoch=True)
        return self.probabilities(logits)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        probabilities = self._evaluate(batch, "val")
        if self.one_logit:
            self.val_metrics.update(probabilities, batch[LABEL_KEY].long())
        self._collect("val", batch, probabilities)

    def on_validation_epoch_end(self) -> None:
        if not self.one_logit:  # every rank holds every patch's predictions: the same metrics on each
            self.validation_predictions = self.predictions("val")
            metrics, left_out = validation_head_metrics(self.validation_predictions, self.target.heads, "val/")
            if left_out and not self._said_classes_left_out and not self.trainer.sanity_checking:
                for name, classes in left_out.items():
                    log.warning("%s averages the classes the validation split holds: it has no sample of %s, whose "
                                "one-vs-rest AUROC is undefined (NaN); a larger validation split would hold every "
                                "class", name, ", ".join(classes))
                self._said_classes_left_out = True
            self.log_dict(metrics)
            return
        computed = self.val_metrics.compute()
        # The progress bar holds the loss and val/auroc, on one line; every metric is logged (MLflow, callbacks).
        self.log_dict({name: value for name, value in computed.items() if name not in PROGRESS_BAR})
        self.log_dict({name: value for name, value in computed.items() if name in PROGRESS_BAR}, prog_bar=True)
        self.val_metrics.reset()
        self.validation_predictions = self.predictions("val")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        validation = self.validation_predictions
        if validation is not None:
            columns = ("label", "probability") if self.one_logit else (*self.target.label_columns,
                                                                       *self.target.probability_columns)
            checkpoint[VALIDATION_PREDICTIONS] = {
                column: torch.tensor(validation[column].to_numpy()) for column in columns}
            if "seriesuid" in validation:  # for eval.threshold=fp_per_scan@ (plain strings: weights_only reads them)
                checkpoint[VALIDATION_PREDICTIONS]["seriesuid"] = validation["seriesuid"].astype(str).tolist()
        calibration = self.operating_point().calibration_state()
        if calibration is not None:
            checkpoint[CALIBRATION] = calibration

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.validation_predictions = stored_validation_predictions(checkpoint)

    def on_test_epoch_start(self) -> None:
        self._outputs["test"].clear()  # a test whose report did not run leaves its outputs behind

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        probabilities = self._evaluate(batch, "test")  # the loss is of the plain input
        if self.evaluation.tta != "none":  # the image is mirrored, never the covariates
            covariates = batch.get(COVARIATES_KEY)
            probabilities = tta_probabilities(lambda image: self.probabilities(self(image, covariates).float()),
                                              batch[IMAGE_KEY], self.evaluation.tta)
        self._collect("test", batch, probabilities)

    def operating_point(self) -> OperatingPoint:
        """``eval.calibration`` of the primary head fitted on the validation predictions of the current weights, on
        which ``eval.threshold`` picks the decision threshold (of a binary primary head)."""
        return OperatingPoint.fit(self.validation_predictions, self.evaluation.calibration, head=self.target.primary)

    def _collect(self, stage: str, batch: dict[str, torch.Tensor], probabilities: torch.Tensor) -> None:
        self._outputs[stage].append(
            (batch[INDEX_KEY].cpu(), probabilities.detach().float().cpu(), batch[LABEL_KEY].detach().cpu()))

    def predictions(self, stage: str) -> pd.DataFrame:
        """This epoch's ``cache_row, label, probability`` of every patch of ``stage`` on all ranks (a
        :func:`~lungexp.evaluation.head_report.target_predictions_table`: every head's columns); clears the
        collected outputs."""
        outputs, self._outputs[stage] = self._outputs[stage], []
        columns = list(zip(*outputs, strict=True)) or [(), (), ()]
        rows, probabilities, labels = (torch.cat(parts) if parts else torch.empty(0) for parts in columns)
        if self.trainer.world_size > 1:
            # Each rank scored its own part of the split (of unequal lengths, see NoduleDataModule); a
            # datamodule whose sampler pads ranks to equal lengths repeats rows, which the table drops.
            rows, probabilities, labels = (torch.cat(gather_all_tensors(t.to(self.device))).cpu()
                                           for t in (rows, probabilities, labels))
        return target_predictions_table(rows.long().numpy(), probabilities.numpy(), self.target,
                                        labels=labels.long().numpy())

    def configure_optimizers(self) -> OptimizerLRScheduler:
        optimizer = self.optimizer_factory(
            params=parameter_groups(self.net, self._base_lr(), self.finetune["head_lr_mult"])
        )
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer),
                                                         "interval": "epoch"}}

    def _base_lr(self) -> float:
        """The optimizer's learning rate as it resolves it: the configured ``lr``, or the optimizer's own
        default when the config leaves it out (read from an optimizer built on a throwaway parameter)."""
        return self.optimizer_factory(params=[nn.Parameter(torch.zeros(1))]).defaults["lr"]
