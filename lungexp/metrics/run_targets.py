"""What a predictions table predicts: its primary head's kind and classes, read from its columns (and, for an
MLflow run, the ``target.*`` params it logged), so that only runs of the same target are compared.

A predictions table (the columns of :class:`~lungexp.data.labels.targets.HeadSpec`) carries ``label`` (class index 0 … K − 1) and its primary head's
probabilities: ``probability`` (binary), ``probability_<class>`` per class in class order (multiclass) or
``probability_ge2`` … ``probability_geK`` = P(level >= k) (ordinal). A multitask table adds, per auxiliary
head ``<name>``, ``<name>_label``, ``<name>_prediction`` and ``<name>_probability…``: runs are compared on the
primary head. A calibrated table keeps the network's own probabilities beside them (``<column>_uncalibrated``),
which name no class.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lungexp.data.labels.class_maps import CLASS_MAPS
from lungexp.metrics.calibration import UNCALIBRATED_SUFFIX
from lungexp.utils.errors import LungexpError

PROBABILITY = "probability"
CUT = re.compile(r"^probability_ge(\d+)$")
AUXILIARY_LABEL = re.compile(r"^(\w+)_label$")


class TargetMismatch(LungexpError):
    """Runs of different targets, or a predictions table that is no head's."""


@dataclass(frozen=True)
class RunTarget:
    """The primary head a predictions table scores.

    Attributes:
        kind: ``binary``, ``multiclass`` or ``ordinal``.
        class_names: in class order (an ordinal head's levels: its rule's names, else ``1`` … ``K``).
        column: the labels-CSV column it learns, as the run logged it (None for a CSV file).
        auxiliary: the auxiliary heads of a multitask table (compared on the primary head only).
    """

    kind: str
    class_names: tuple[str, ...]
    column: str | None = None
    auxiliary: tuple[str, ...] = ()

    @property
    def probability_columns(self) -> tuple[str, ...]:
        """The primary head's probability columns, as :class:`~lungexp.data.labels.targets.HeadSpec` names them."""
        if self.kind == "binary":
            return (PROBABILITY,)
        if self.kind == "multiclass":
            return tuple(f"{PROBABILITY}_{name}" for name in self.class_names)
        return tuple(f"{PROBABILITY}_ge{level}" for level in range(2, len(self.class_names) + 1))

    def describe(self) -> str:
        """``ordinal 'malignancy' (1, 2, 3, 4, 5)``."""
        column = f" '{self.column}'" if self.column else ""
        return f"{self.kind}{column} ({', '.join(self.class_names)})"

    def same_as(self, other: RunTarget) -> bool:
        """Same kind and classes, and the same column where both runs logged theirs."""
        return (self.kind == other.kind and self.class_names == other.class_names
                and (self.column is None or other.column is None or self.column == other.column))


BINARY = RunTarget("binary", ("negative", "positive"))


def run_target(predictions: pd.DataFrame, source: str, settings: Mapping[str, str] | None = None) -> RunTarget:
    """The target of a predictions table (``source`` names it in messages), from its probability columns; a
    run's logged ``target.*`` ``settings`` add its column and an ordinal head's level names, and must agree with
    the columns (a :class:`TargetMismatch` naming both otherwise)."""
    settings = settings or {}
    prefix = "target.primary." if settings.get("target.kind") == "multitask" else "target."
    logged_kind, column = settings.get(f"{prefix}kind"), settings.get(f"{prefix}column")
    auxiliary = tuple(sorted(match.group(1) for name in predictions.columns
                             if (match := AUXILIARY_LABEL.match(str(name))) and f"{match.group(1)}_prediction"
                             in predictions.columns))
    kind, class_names = _head_of_columns(predictions, source, settings.get(f"{prefix}rule"))
    if logged_kind is not None and logged_kind != kind:
        raise TargetMismatch(f"{source}: the run logged {prefix}kind={logged_kind}, but its predictions hold a "
                             f"{kind} head's columns {list(RunTarget(kind, class_names).probability_columns)}")
    return RunTarget(kind, class_names, column, auxiliary)


def _head_of_columns(predictions: pd.DataFrame, source: str, rule: str | None) -> tuple[str, tuple[str, ...]]:
    columns = [str(name) for name in predictions.columns]
    if PROBABILITY in columns:
        return "binary", BINARY.class_names
    cuts = sorted(int(match.group(1)) for name in columns if (match := CUT.match(name)))
    if cuts:
        levels = cuts[-1]
        if cuts != list(range(2, levels + 1)):
            raise TargetMismatch(f"{source}: an ordinal head's columns are probability_ge2 … probability_geK, but it "
                                 f"has {[f'probability_ge{cut}' for cut in cuts]}")
        named = CLASS_MAPS.get(rule or "")
        names = named.class_names if named is not None and named.num_classes == levels else None
        return "ordinal", names or tuple(str(level) for level in range(1, levels + 1))
    classes = tuple(name.removeprefix(f"{PROBABILITY}_") for name in columns
                    if name.startswith(f"{PROBABILITY}_") and not name.endswith(UNCALIBRATED_SUFFIX))
    if len(classes) >= 2:
        return "multiclass", classes
    raise TargetMismatch(f"{source}: no probability column of a head (probability; probability_<class> per class; "
                         f"probability_ge2 … probability_geK); its columns are {columns}")


def same_target(targets: Sequence[RunTarget], names: Sequence[str]) -> RunTarget:
    """The one target of all runs (``names``: how messages name them); the first two that differ are a
    :class:`TargetMismatch` naming both."""
    first = targets[0]
    for target, name in zip(targets[1:], names[1:], strict=True):
        if not first.same_as(target):
            raise TargetMismatch(f"{names[0]} and {name} predict different targets ({names[0]}: {first.describe()}; "
                                 f"{name}: {target.describe()}); compare runs trained on the same target")
    column = next((target.column for target in targets if target.column), None)
    auxiliary = next((target.auxiliary for target in targets if target.auxiliary), ())
    return RunTarget(first.kind, first.class_names, column, auxiliary)


def class_labels(predictions: pd.DataFrame, num_classes: int, source: str) -> np.ndarray:
    """``label`` as class indices 0 … K − 1; anything else is a :class:`TargetMismatch` naming ``source``, the
    rows and their values (the header is row 1)."""
    values = pd.to_numeric(predictions["label"], errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values >= num_classes)
    if bad.any():
        rows = ", ".join(f"{row + 2} ({predictions['label'].iloc[row]})" for row in np.flatnonzero(bad)[:5])
        raise TargetMismatch(f"{source}: column 'label' must hold class indices 0 … {num_classes - 1}, but "
                             f"{int(bad.sum())} row(s) do not: row(s) {rows} (the header is row 1)")
    return values.astype(np.int64)
