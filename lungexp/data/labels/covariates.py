"""Covariates: numeric columns of a points table (e.g. ``diameter_mm``) that a model takes besides, or instead of,
the image (``model.covariates``).

A covariate must be known for a new scan before anyone reads it: the readers' ratings of LIDC-IDRI
(:data:`~lungexp.data.names.NOT_COVARIATES`: ``malignancy``, ``spiculation``, ...) are not, and ``malignancy`` is
the label itself, so they are refused unless asked for explicitly (:func:`check_rating_covariates`). The values are
checked where a table is read (the labels CSV for training, the candidates CSV for ``predict``): a missing column,
text or an empty cell is one message naming the column, the file and the first rows (:func:`covariate_values`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungexp.data.labels.annotations import AnnotationError
from lungexp.data.names import NOT_COVARIATES, ROW_NAME_COLUMN
from lungexp.utils.errors import ArgumentError, did_you_mean

# Where a covariate model's head starts (model.covariate_start; lungexp.models.fusion.CovariateFusion.start_from).
COVARIATE_STARTS = ("fitted", "random")

log = logging.getLogger(__name__)

OVERRIDE_KEY = "model.allow_rating_covariates"
_SHOWN = 5  # rows listed in an error


def covariate_names(names: Any, key: str = "model.covariates") -> tuple[str, ...]:
    """``names`` as a tuple of column names: a list of distinct non-empty strings; problems are an
    :class:`ArgumentError` naming ``key``."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ArgumentError(f"{key}={names!r} must be a list of numeric columns of the labels CSV, e.g. "
                            f"{key}=[diameter_mm]")
    if not all(isinstance(name, str) and name.strip() for name in names):
        raise ArgumentError(f"{key}={list(names)!r}: every covariate is the name of a column of the labels CSV")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise ArgumentError(f"{key}={list(names)}: {', '.join(repeated)} given twice; name each column once")
    return tuple(names)


def check_rating_covariates(names: Sequence[str], allow_ratings: bool, key: str = "model.covariates") -> list[str]:
    """The readers' ratings among ``names`` (see the module's doc): an :class:`ArgumentError` naming ``key`` and the
    override unless ``allow_ratings``, else a warning saying what such a model cannot do; returns them."""
    ratings = rating_covariates(names)
    if ratings and not allow_ratings:
        label = " (malignancy is the label itself)" if "malignancy" in ratings else ""
        raise ArgumentError(f"{key}: {', '.join(ratings)} is a reader's rating{label}, which a new scan does not "
                            f"have, so a model that needs it cannot score one; drop it, or set {OVERRIDE_KEY}=true "
                            "to study it anyway")
    if ratings:
        log.warning("%s: using the readers' rating(s) %s as input (%s=true): this model cannot score a scan no "
                    "radiologist has read", key, ", ".join(ratings), OVERRIDE_KEY)
    return ratings


def rating_covariates(names: Sequence[str]) -> list[str]:
    """The readers' ratings among ``names``."""
    return [name for name in names if name in NOT_COVARIATES]


def covariate_values(table: pd.DataFrame, names: Sequence[str], source: str | Path) -> np.ndarray:
    """The ``names`` columns of ``table`` as a ``(rows, len(names))`` float64 array.

    ``table``'s index is its file's row order (rows are named as in a spreadsheet, index + 2, or by its
    ``row_name`` column). Raises :class:`AnnotationError` naming ``source`` for a missing column (with the closest
    found), or the column and its first rows for text, empty cells or infinite values.
    """
    found = [str(column) for column in table.columns]
    missing = [name for name in names if name not in found]
    if missing:
        hints = "".join(did_you_mean(name, found) for name in missing)
        raise AnnotationError(f"{source}: no column {', '.join(repr(name) for name in missing)} for the covariates "
                              f"{list(names)} (model.covariates){hints}; its columns are {found}. Add the column, "
                              "or train without that covariate")
    values = np.empty((len(table), len(names)), dtype=np.float64)
    for position, name in enumerate(names):
        numbers = pd.to_numeric(table[name], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(numbers)
        if bad.any():
            raise AnnotationError(f"{source}: covariate column '{name}' (model.covariates) must hold a finite number "
                                  f"in every row, but {int(bad.sum())} row(s) do not: "
                                  f"{_rows(table, table[name], bad)}")
        values[:, position] = numbers
    return values


def _rows(table: pd.DataFrame, column: pd.Series, bad: np.ndarray) -> str:
    """``row 3 ('abc'), row 7 (empty)`` and how many more, named as :func:`covariate_values` says."""
    positions = np.flatnonzero(bad)
    names = (table[ROW_NAME_COLUMN].astype(str).to_numpy() if ROW_NAME_COLUMN in table
             else np.array([f"row {index + 2}" for index in table.index]))
    shown = ", ".join(f"{names[p]} ({_shown(column.iloc[p])})" for p in positions[:_SHOWN])
    return shown + (f" and {len(positions) - _SHOWN} more" if len(positions) > _SHOWN else "")


def _shown(value: Any) -> str:
    if pd.isna(value) or (isinstance(value, str) and not value.strip()):
        return "empty"
    return repr(value) if isinstance(value, str) else str(value)
