"""The typed values of evaluation: the ``eval`` options (checked when built, before any training), the settings
one predictions table is judged with, its report, and the result of ``python -m lungexp.evaluate``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from lungexp.metrics.calibration import check_calibration
from lungexp.metrics.luna16_froc import FrocReference, FrocResult
from lungexp.metrics.stratified import Strata
from lungexp.metrics.threshold import check_threshold_rule
from lungexp.models.tta import check_tta
from lungexp.utils.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationOptions:
    """How predictions are judged and pictured (``conf/eval/default.yaml``, whose values are these defaults: a
    test holds them equal).

    Args:
        threshold: decision-threshold rule, see :mod:`lungexp.metrics.threshold`.
        calibration: ``none``, ``temperature`` or ``isotonic`` of the primary head, fitted on the tested
            checkpoint's validation predictions (:mod:`lungexp.metrics.calibration`; a multiclass head: ``temperature``
            only, an ordinal one: ``none``); the threshold is chosen on the calibrated ones.
        bootstrap: resamplings of whole series (patients with ``data.split.group_by``) for the 95 % interval of
            every test metric, the CPM's included (0: none); see :mod:`lungexp.metrics.bootstrap`.
        montage_k: worst errors shown per kind (false positives, false negatives); 0: no montage.
        gradcam_samples: test positives, and as many negatives, shown with Grad-CAM; 0: none.
        gradcam_layer: the network's module (dotted name) whose output Grad-CAM explains; ``None``: the
            last 3D convolution, found automatically.
        tta: test-time augmentation of the test stage, ``evaluate`` and ``predict``: ``none`` or ``flips``
            (see :mod:`lungexp.models.tta`); Grad-CAM explains the plain input.
        strata: ``{column, edges}``: every test metric also within strata of a numeric column of the samples,
            and the stratified AUROC (:mod:`lungexp.metrics.stratified`); ``None``: none. The column is checked
            against the labels CSV before training (:func:`~lungexp.evaluation.split_metrics.check_strata_column`).
    """

    threshold: str | float = "youden"
    calibration: str = "none"
    bootstrap: int = 1000
    montage_k: int = 4
    gradcam_samples: int = 3
    gradcam_layer: str | None = None
    tta: str = "none"
    strata: Strata | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold_rule(self.threshold))
        object.__setattr__(self, "strata", Strata.from_config(self.strata, "eval.strata"))
        check_calibration(self.calibration)
        check_tta(self.tta, "eval.tta")
        for key in ("bootstrap", "montage_k", "gradcam_samples"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"eval.{config_key(key)}={value!r} must be a whole number >= 0")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> EvaluationOptions:
        """From the ``eval`` group: ``{threshold, calibration, bootstrap, montage_k, tta, gradcam: {samples,
        target_layer}}``."""
        config = dict(config or {})
        if "froc_bootstrap" in config:  # the eval config of checkpoints saved before eval.bootstrap
            log.warning("froc_bootstrap=%s (a key of older eval configs) is ignored: eval.bootstrap now "
                        "resamples every test metric",
                        config.pop("froc_bootstrap"))
        gradcam = dict(config.pop("gradcam", None) or {})
        flat = {**config, **{f"gradcam.{key}": value for key, value in gradcam.items()}}
        fields_by_key = {config_key(item.name): item.name for item in fields(cls)}
        unknown = sorted(set(config) - set(fields_by_key))
        unknown += sorted(f"gradcam.{key}" for key in gradcam if f"gradcam.{key}" not in fields_by_key)
        if unknown:
            raise ConfigError(f"unknown eval option(s) {['eval.' + key for key in unknown]}; "
                              "see conf/eval/default.yaml")
        return cls(**{fields_by_key[key]: value for key, value in flat.items()})

    def to_config(self) -> dict[str, Any]:
        """The ``eval`` group of these options, as :meth:`from_config` reads it (plain values)."""
        config: dict[str, Any] = {}
        for item in fields(self):
            group, _, key = config_key(item.name).rpartition(".")
            value = getattr(self, item.name)
            (config.setdefault(group, {}) if group else config)[key] = (
                value.as_config() if isinstance(value, Strata) else value)
        return config


# The options whose key in the ``eval`` group is not their field's name.
_NESTED_KEYS = {"gradcam_samples": "gradcam.samples", "gradcam_layer": "gradcam.target_layer"}


def config_key(field_name: str) -> str:
    """The dotted key under ``eval`` of an :class:`EvaluationOptions` field (``gradcam_samples``:
    ``gradcam.samples``)."""
    return _NESTED_KEYS.get(field_name, field_name)


@dataclass(frozen=True)
class EvaluationSettings:
    """How a predictions table is judged.

    Args:
        threshold: decision threshold, chosen on validation (:mod:`lungexp.evaluation.operating_point`).
        froc: nodules and scans for the LUNA16 FROC/CPM (task ``candidates``); ``None``: no FROC.
        detection: the patches are candidate detections (task ``candidates``), so false positives per scan mean
            something (``at_threshold/fp_per_scan``); not for a crop of each nodule (tasks ``malignancy``, ``points``).
        bootstrap: resamplings of whole clusters for the 95 % interval of every metric (0: none).
        group_by: the cluster: ``seriesuid``, or the patient column of ``data.split.group_by``.
        seed: seed of the resampling.
        strata: strata of a column of the table, each judged on its own too; ``None``: none.
    """

    threshold: float = 0.5
    froc: FrocReference | None = None
    detection: bool = False
    bootstrap: int = 0
    group_by: str = "seriesuid"
    seed: int = 0
    strata: Strata | None = None


@dataclass
class EvaluationReport:
    """Metrics by name (``test/auroc``, ...) and figures by artifact path (``plots/roc_curve.png``)."""

    metrics: dict[str, float]
    figures: dict[str, Figure] = field(default_factory=dict)
    froc: FrocResult | None = None


@dataclass(frozen=True)
class EvaluationResult:
    """What ``python -m lungexp.evaluate`` did: the model (a checkpoint, or how many), the split, its metrics
    and predictions, the MLflow run it logged and the training run it evaluated."""

    checkpoint: str
    split: str
    metrics: dict[str, float]
    predictions: pd.DataFrame
    mlflow_run_id: str | None
    training_run_id: str | None
