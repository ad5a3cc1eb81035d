"""Reading LUNA16-style CSVs of world coordinates, and checking them against the scans.

A CSV with a renamed column, a stray empty cell or voxel indices instead of millimetres would
otherwise surface much later as a ``KeyError`` or as patches of empty air. Every problem is an
:class:`AnnotationError` naming the file, the column, the rows (numbered as in a spreadsheet: the
header is row 1) and what is expected. Extra columns are kept untouched. Points that fit their scan
only once its size is reordered blame the scan's header instead (a ``ScanReadError`` naming it).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lungexp.data.names import COORD_COLUMNS
from lungexp.data.scans.read_errors import ScanReadError
from lungexp.data.scans.reader import ScanHeader
from lungexp.utils.errors import LungexpError, look_up_option

log = logging.getLogger(__name__)

OUTSIDE_CHOICES = ("error", "skip")
# annotations_excluded.csv marks a finding of unknown size (e.g. < 3 mm) by exactly this diameter_mm;
# LUNA16's evaluation then uses 10 mm. Any other diameter must be positive: 0 could never be hit.
UNKNOWN_DIAMETER = -1.0

# Rows listed in an error before "and N more".
_SHOWN = 5


class AnnotationError(LungexpError):
    """A labels CSV that cannot be used; the message says which file, rows and columns, and why."""


# A rule parses one column: it returns the parsed values and a mask of the rows that break it.
Rule = Callable[[pd.Series], tuple[pd.Series, pd.Series]]


def _text(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    return column, column.isna() | (column.astype(str).str.strip() == "")


def _number(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    values = pd.to_numeric(column, errors="coerce").astype(np.float64)
    return values, ~np.isfinite(values)


def _positive(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    values, bad = _number(column)
    return values, bad | (values <= 0)


def _class01(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    values, bad = _number(column)
    bad |= ~values.isin([0, 1])
    return values.where(~bad, 0).astype(np.int64), bad


def _true_false(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    values = column.astype(str).str.strip().str.lower().map({"true": True, "false": False})
    return values.fillna(False).astype(bool), values.isna()


def _present(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    return column, column.isna()


def _diameter_or_unknown(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    values, bad = _number(column)
    return values, bad | ((values <= 0) & (values != UNKNOWN_DIAMETER))


# What each rule expects, for error messages.
_EXPECTED: dict[Rule, str] = {
    _text: "a non-empty series UID",
    _number: "a finite number (world mm)",
    _positive: "a positive number (mm)",
    _class01: "0 or 1",
    _true_false: "True or False",
    _present: "a value in every row",
    _diameter_or_unknown: f"a positive number (mm), or {UNKNOWN_DIAMETER:g} for a size unknown",
}

_POINT_RULES: dict[str, Rule] = {"seriesuid": _text, **dict.fromkeys(COORD_COLUMNS, _number)}
_ANNOTATION_RULES = {**_POINT_RULES, "diameter_mm": _positive}
_CANDIDATE_RULES = {**_POINT_RULES, "class": _class01}
_MALIGNANCY_RULES = {**_ANNOTATION_RULES, "mal_bool": _true_false}
_WORLD_POINT_RULES = {**_POINT_RULES, "label": _present}
_EXCLUDED_RULES = {**_POINT_RULES, "diameter_mm": _diameter_or_unknown}


def read_annotations(path: str | Path) -> pd.DataFrame:
    """LUNA16 ``annotations.csv``: ``seriesuid, coordX, coordY, coordZ, diameter_mm`` (world mm, > 0)."""
    return _read_csv(path, _ANNOTATION_RULES)


def read_excluded_annotations(path: str | Path) -> pd.DataFrame:
    """LUNA16 ``annotations_excluded.csv``: findings that are neither nodules nor false positives.

    Same columns as ``annotations.csv``; ``diameter_mm`` is positive or :data:`UNKNOWN_DIAMETER` (-1).
    """
    return _read_csv(path, _EXCLUDED_RULES)


def check_annotations(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """A table already in memory checked by the rules of :func:`read_annotations`; ``source`` names it."""
    return _parsed(table.copy(), _ANNOTATION_RULES, source)


def check_excluded_annotations(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """A table already in memory checked by the rules of :func:`read_excluded_annotations`."""
    return _parsed(table.copy(), _EXCLUDED_RULES, source)


def read_candidates(path: str | Path) -> pd.DataFrame:
    """LUNA16 ``candidates.csv``/``candidates_V2.csv``: ``seriesuid, coordX, coordY, coordZ, class`` (int 0/1)."""
    return _read_csv(path, _CANDIDATE_RULES)


def read_malignancy_annotations(path: str | Path) -> pd.DataFrame:
    """``annotations_with_malignancy.csv``: the annotation columns plus ``mal_bool`` (parsed to bool).

    ``mal_details``, the bounding box and other columns are kept as read.
    """
    return _read_csv(path, _MALIGNANCY_RULES)


def read_world_points(path: str | Path) -> pd.DataFrame:
    """Any CSV of world points ``seriesuid, coordX, coordY, coordZ, label`` (e.g. for your own NIfTI data).

    ``label`` is kept as read; it must only be present in every row.
    """
    return _read_csv(path, _WORLD_POINT_RULES)


def read_points(path: str | Path, with_seriesuid: bool = True) -> pd.DataFrame:
    """World points ``seriesuid, coordX, coordY, coordZ`` (or only the coordinates), e.g. candidates to score."""
    return _read_csv(path, _POINT_RULES if with_seriesuid else dict.fromkeys(COORD_COLUMNS, _number))


def read_number_columns(path: str | Path, numbers: Sequence[str], texts: Sequence[str] = ()) -> pd.DataFrame:
    """Any CSV whose ``texts`` columns hold non-empty text and ``numbers`` columns finite numbers (e.g. a
    detector's boxes, :mod:`lungexp.data.labels.detector_boxes`); checked and reported as the readers above."""
    return _read_csv(path, {**dict.fromkeys(texts, _text), **dict.fromkeys(numbers, _number)})


def _read_csv(path: str | Path, rules: Mapping[str, Rule]) -> pd.DataFrame:
    """Read ``path`` and parse the columns named in ``rules`` (:func:`_parsed`)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: CSV not found; check the path")
    header = ",".join(rules)
    text_columns = [name for name, rule in rules.items() if rule in (_text, _true_false)]
    try:
        table = pd.read_csv(path, dtype=dict.fromkeys(text_columns, str))
    except pd.errors.EmptyDataError:
        raise AnnotationError(f"{path}: the file is empty; expected a header line '{header}' "
                              "followed by one row per point") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: not a readable CSV ({error}); expected columns {header}") from None
    return _parsed(table, rules, path)


def _parsed(table: pd.DataFrame, rules: Mapping[str, Rule], source: str | Path) -> pd.DataFrame:
    """``table`` with the columns named in ``rules`` parsed; raise on the first broken column."""
    _check_columns(source, table, list(rules))
    for name, rule in rules.items():
        values, bad = rule(table[name])
        if bad.any():
            raise AnnotationError(f"{source}: column '{name}' must hold {_EXPECTED[rule]}, but "
                                  f"{describe_rows(bad, table[name])}")
        table[name] = values
    return table


def _check_columns(path: str | Path, table: pd.DataFrame, required: list[str]) -> None:
    """Raise if required columns are missing, suggesting the closest found name for each."""
    found = [str(name) for name in table.columns]
    missing = [name for name in required if name not in found]
    if not missing:
        return
    candidates = {name.lower(): name for name in found if name not in required}
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name.lower(), list(candidates), n=1, cutoff=0.6)
        if close:
            hints.append(f"'{candidates[close[0]]}' for '{name}'")
    hint = f"; did you mean {', '.join(hints)}? rename the column(s)" if hints else ""
    raise AnnotationError(f"{path}: missing column(s) {missing}; found {found}{hint}. "
                          f"Expected at least {required} (extra columns are kept)")


def describe_rows(bad: pd.Series, raw: pd.Series) -> str:
    """'row(s) 3 ('abc'), 7 (empty) and 2 more' with spreadsheet row numbers (header = row 1)."""
    positions = np.flatnonzero(bad.to_numpy())
    shown = ", ".join(f"{p + 2} ({_show(raw.iloc[p])})" for p in positions[:_SHOWN])
    more = f" and {len(positions) - _SHOWN} more" if len(positions) > _SHOWN else ""
    return f"{len(positions)} row(s) do not: row(s) {shown}{more}"


def _show(value: object) -> str:
    if pd.isna(value):
        return "empty"
    return repr(value) if isinstance(value, str) else str(value)


def check_points_inside(
    points: pd.DataFrame,
    headers: Mapping[str, ScanHeader],
    on_outside: str = "error",
    source: str | Path | None = None,
) -> pd.DataFrame:
    """The rows of ``points`` that have a scan and lie inside it.

    Args:
        points: ``seriesuid, coordX, coordY, coordZ`` (world mm) as returned by the readers here; its
            index is taken as the CSV's row order for the row numbers in messages.
        headers: seriesuid -> scan geometry (:func:`lungexp.data.scans.reader.read_scan_header`).
        on_outside: ``error`` raises on points without a scan or outside it; ``skip`` drops them and
            logs a warning with their count (``data.outside``).
        source: the CSV the points came from, named in messages.

    Returns the kept rows with their original index.
    """
    look_up_option("data.outside", on_outside, OUTSIDE_CHOICES)
    name = source if source is not None else "points"
    unknown = ~points["seriesuid"].isin(list(headers))
    if unknown.any():
        uids = sorted(points.loc[unknown, "seriesuid"].unique())
        listing = ", ".join(uids[:3]) + (f" and {len(uids) - 3} more" if len(uids) > 3 else "")
        if on_outside == "error":
            raise AnnotationError(f"{name}: {len(uids)} seriesuid(s) in {int(unknown.sum())} row(s) have no scan: "
                                  f"{listing}; add their scans under data.root or skip their rows "
                                  "(data.missing_scans=skip)")
        log.warning("%s: skipping %d row(s) of %d seriesuid(s) without a scan", name, int(unknown.sum()), len(uids))
    inside = pd.Series(False, index=points.index)
    for uid, rows in points[~unknown].groupby("seriesuid").groups.items():
        inside[rows] = headers[uid].contains_world(points.loc[rows, COORD_COLUMNS].to_numpy(np.float64))
    outside = ~unknown & ~inside
    if outside.any():
        _check_size_order(points[~unknown], outside[~unknown], headers, name)
        if on_outside == "error":
            raise AnnotationError(
                f"{name}: {int(outside.sum())} point(s) lie outside their scan: "
                f"{_describe_outside(points[outside], headers)}. Coordinates must be world mm (x, y, z) in the "
                "scan's frame, not voxel indices; or skip such points (data.outside=skip)"
            )
        log.warning("%s: skipping %d point(s) outside their scan", name, int(outside.sum()))
    return points[inside]


def _check_size_order(points: pd.DataFrame, outside: pd.Series, headers: Mapping[str, ScanHeader],
                      name: str | Path) -> None:
    """Raise :class:`ScanReadError` naming the header when a scan's points lie outside it but would all lie
    inside were its size in another order (e.g. DimSize written z y x): then the header is wrong, not the
    CSV, and the voxels would be read scrambled."""
    for uid, count in points.loc[outside, "seriesuid"].value_counts().items():
        if count < 2:  # a single stray point says more about its row than about the header
            continue
        scan = headers[uid]
        world = points.loc[points["seriesuid"] == uid, COORD_COLUMNS].to_numpy(np.float64)
        size = tuple(int(n) for n in scan.size_xyz)
        for order in sorted(set(itertools.permutations(size)) - {size}):
            if dataclasses.replace(scan, size_xyz=np.array(order)).contains_world(world).all():
                field = "DimSize" if scan.path.suffix.lower() == ".mhd" else "the image size"
                raise ScanReadError(
                    f"{scan.path}: {field} {' '.join(map(str, size))} (x y z) puts {count} of the {len(world)} points "
                    f"of {name} for this scan outside it, but {' '.join(map(str, order))} holds them all: the header "
                    "lists the sizes in the wrong order (a .mhd's DimSize is x y z); fix the header or re-convert "
                    "the scan")


def _describe_outside(rows: pd.DataFrame, headers: Mapping[str, ScanHeader]) -> str:
    """The first few outside points with their row, uid, world coordinate and scan extent."""
    lines = []
    for index, row in rows.head(_SHOWN).iterrows():
        low, high = headers[row["seriesuid"]].world_extent()
        extent = ", ".join(f"{axis} [{lo:.1f}, {hi:.1f}]" for axis, lo, hi in zip("xyz", low, high, strict=True))
        world = ", ".join(f"{row[c]:.1f}" for c in COORD_COLUMNS)
        lines.append(f"row {index + 2} ({row['seriesuid']}) at ({world}) mm, scan spans {extent} mm")
    more = f"; and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
    return "; ".join(lines) + more
