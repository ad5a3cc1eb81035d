"""What a training run is given: the typed options that :func:`lungexp.config.check.check` builds once.

The ``data``, ``eval``, ``target`` and ``cv`` groups travel down as :class:`~lungexp.data.options.DataOptions`,
:class:`~lungexp.evaluation.types.EvaluationOptions`, :class:`~lungexp.data.labels.targets.TargetOptions` and
:class:`CrossValidationOptions`; nothing below the
entry points reads them from the config again. The config travels along, read-only, for the nodes Hydra
instantiates (``model``, ``trainer``, ``callbacks``, ``logger``), the top-level values and the tracking that
logs it whole. A step that needs other values works on a changed copy (``dataclasses.replace``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from lungexp.data.labels.targets import TargetOptions
from lungexp.data.options import DataOptions
from lungexp.evaluation.types import EvaluationOptions
from lungexp.utils.dictconfig import to_dict

# A value built only from other data.* keys or the project's data folders (e.g. labels_csv:
# ${data.root}/candidates_V2.csv) is stored as the interpolation, so it follows data.root=... or another
# project folder on evaluation. Nothing else: paths.mlflow_uri, say, may hold a server's password.
RELOCATABLE = re.compile(r"\$\{(?:data\.[\w.]+|paths\.(?:root_dir|data_dir|cache_dir))\}")


@dataclass(frozen=True)
class CrossValidationOptions:
    """``cv.folds``-fold cross-validation (:mod:`lungexp.training.cross_validation`).

    Args:
        folds: K >= 2 folds (e.g. 10 for LUNA16's ten subsets).
    """

    folds: int


@dataclass(frozen=True)
class RunOptions:
    """A checked training run.

    Args:
        config: the composed config, read-only where :func:`lungexp.config.check.check` made it.
        data: the ``data.*`` options the datamodule is made from.
        evaluation: the ``eval`` options the test stage judges with.
        target: the ``target`` options: what each sample is and which heads the network gets.
        cv: the cross-validation options, with ``cv.folds`` set; None: one run.
        train_transform: the training augmentation's node (``data.train_transform``, i.e. ``aug.train``),
            instantiated with the datamodule; None: none.
        stored_data: the ``data`` group as checkpoints store it (plain values, except interpolations of other
            ``data.*`` keys and the data folders, so that it follows ``data.root=...`` on evaluation).
    """

    config: DictConfig
    data: DataOptions
    evaluation: EvaluationOptions
    target: TargetOptions = field(default_factory=TargetOptions)
    cv: CrossValidationOptions | None = None
    train_transform: Any = None
    stored_data: Mapping[str, Any] = field(default_factory=dict)


def stored_data_config(data: DictConfig) -> dict[str, Any]:
    """The ``data`` node of a composed config as checkpoints store it: plain values, keeping the interpolations
    made only of :data:`RELOCATABLE` references. The training augmentation is dropped: evaluation never augments."""
    stored: dict[str, Any] = _keep_relocatable(to_dict(data, resolve=True), to_dict(data, resolve=False))
    stored["train_transform"] = None
    return stored


def _keep_relocatable(resolved: Any, raw: Any) -> Any:
    if isinstance(resolved, dict) and isinstance(raw, dict):
        return {key: _keep_relocatable(value, raw[key]) for key, value in resolved.items()}
    if isinstance(raw, str) and "${" in raw and "${" not in RELOCATABLE.sub("", raw):
        return raw
    return resolved
