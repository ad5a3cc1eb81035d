"""The ``eval`` config group as a typed object, checked when it is built (before any training)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lungexp.metrics.calibration import check_calibration
from lungexp.metrics.threshold import check_threshold_rule
from lungexp.utils.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationOptions:
    """How predictions are judged and pictured (``conf/eval/default.yaml``).

    Args:
        threshold: decision-threshold rule, see :mod:`lungexp.metrics.threshold`.
        calibration: ``none``, ``temperature`` or ``isotonic``, fitted on the tested checkpoint's validation
            predictions (:mod:`lungexp.metrics.calibration`); the threshold is chosen on the calibrated ones.
        bootstrap: resamplings of whole series (patients with ``data.split.group_by``) for the 95 %
            interval of every test metric, the CPM's included (0: none); see :mod:`lungexp.metrics.bootstrap`.
        montage_k: worst errors shown per kind (false positives, false negatives); 0: no montage.
        gradcam_samples: test positives, and as many negatives, shown with Grad-CAM; 0: none.
        gradcam_layer: the network's module (dotted name) whose output Grad-CAM explains; ``None``: the
            last 3D convolution, found automatically.
    """

    threshold: str | float = "youden"
    calibration: str = "none"
    bootstrap: int = 1000
    montage_k: int = 4
    gradcam_samples: int = 3
    gradcam_layer: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold_rule(self.threshold))
        check_calibration(self.calibration)
        for key in ("bootstrap", "montage_k", "gradcam_samples"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"eval.{_config_key(key)}={value!r} must be a whole number >= 0")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> EvaluationOptions:
        """From the ``eval`` group: ``{threshold, calibration, bootstrap, montage_k, gradcam: {samples,
        target_layer}}``."""
        config = dict(config or {})
        if "froc_bootstrap" in config:  # the eval config of checkpoints saved before eval.bootstrap
            log.warning("froc_bootstrap=%s (a key of older eval configs) is ignored: eval.bootstrap now "
                        "resamples every test metric",
                        config.pop("froc_bootstrap"))
        gradcam = dict(config.pop("gradcam", None) or {})
        unknown = sorted(set(config) - {"threshold", "calibration", "bootstrap", "montage_k"})
        unknown += sorted(f"gradcam.{key}" for key in set(gradcam) - {"samples", "target_layer"})
        if unknown:
            raise ConfigError(f"unknown eval option(s) {['eval.' + key for key in unknown]}; "
                              "see conf/eval/default.yaml")
        if "samples" in gradcam:
            config["gradcam_samples"] = gradcam["samples"]
        if "target_layer" in gradcam:
            config["gradcam_layer"] = gradcam["target_layer"]
        return cls(**config)


def _config_key(field: str) -> str:
    return {"gradcam_samples": "gradcam.samples"}.get(field, field)
