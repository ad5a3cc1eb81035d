"""LUNA16 FROC and CPM: sensitivity at 1/8 ... 8 false positives per scan, and their mean.

The rules are those of LUNA16's evaluation script (``noduleCADEvaluationLUNA16.py``):

* a candidate hits a nodule when its centre lies within the nodule's radius (``diameter_mm / 2``) in
  world mm; inclusive at the radius here (the script's ``<`` differs only for a centre exactly on
  the sphere), with a 1e-6 mm tolerance so that rounding cannot decide a hit;
* several hits on one nodule count once, with the highest probability among them;
* a candidate hitting a finding of ``annotations_excluded.csv`` (and no nodule) is ignored: neither a
  true nor a false positive. A diameter of ``-1`` (size unknown) counts as 10 mm, as in the script;
* diameters are read by the rules of :mod:`lungexp.data.labels.annotations`, as for training: a nodule's must
  be positive (0 could never be hit) and an excluded finding's positive or exactly ``-1`` (the script
  would also read -5 as 10 mm); other values are an error naming the rows;
* candidates at the same point of a scan (to 1e-4 mm) are one: repeated rows are dropped with a warning
  counting them (a table concatenated twice would double every false positive), and the same point with two
  scores is an error naming both rows;
* every other candidate is a false positive; false positives per scan divide by the number of
  scans evaluated, including scans without nodules or candidates;
* a nodule that no candidate hits stays in the denominator, so sensitivity can top out below 1;
* the sensitivity at a rate is read off the FROC curve by linear interpolation between its operating
  points (``np.interp``, as the script does), at the rate itself; where the curve has several points at
  one rate the highest sensitivity counts, and beyond the last point the curve stays flat;
* CPM (competition performance metric) = mean of the seven sensitivities;
* the bootstrap resamples scans with replacement, as the script does; the 95 % interval of the CPM
  is the 2.5th and 97.5th order statistic of the resampled CPMs.

Everything is vectorised: matching compares each nodule only with the candidates of its own scan,
and the curve is one sort plus cumulative sums (``scripts/bench_eval.py``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lungexp.data.labels.annotations import (
    UNKNOWN_DIAMETER,
    check_annotations,
    check_excluded_annotations,
    read_annotations,
    read_excluded_annotations,
)
from lungexp.data.labels.sample_table import drop_duplicate_points
from lungexp.metrics.bootstrap import ClusterResampling, percentile_interval
from lungexp.utils.errors import LungexpError

log = logging.getLogger(__name__)

FP_RATES = (0.125, 0.25, 0.5, 1, 2, 4, 8)
UNKNOWN_DIAMETER_MM = 10.0
HIT_TOLERANCE_MM = 1e-6
COORDINATES = ("coordX", "coordY", "coordZ")
HEAD_FACTOR = 3  # bootstrap: the head of the curve read first, in multiples of the last rate's FPs
CHUNK_ENTRIES = 4_000_000  # bootstrap: draws x curve entries per block
PREDICTION_COLUMNS = ("seriesuid", *COORDINATES, "probability")
ANNOTATION_COLUMNS = ("seriesuid", *COORDINATES, "diameter_mm")


class FrocInputError(LungexpError):
    """A predictions or annotations table the FROC cannot use; the message names the table and column."""


def rate_name(rate: float) -> str:
    """``0.125`` -> ``'0.125'``, ``1`` -> ``'1'``: the rate as it appears in metric names."""
    return f"{rate:g}"


@dataclass(frozen=True)
class FrocResult:
    """LUNA16 FROC analysis of one set of predictions.

    Attributes:
        cpm: mean sensitivity over :data:`FP_RATES` (NaN without nodules).
        sensitivities: sensitivity at each of :data:`FP_RATES`.
        curve: ``fps_per_scan, sensitivity, threshold``: one operating point per distinct probability,
            from ``(0, 0, inf)`` down to the lowest probability.
        num_scans: scans evaluated (the FP-rate divisor).
        num_nodules: nodules of those scans (the sensitivity denominator).
        num_found: nodules hit by at least one candidate (the highest reachable sensitivity).
        num_candidates: candidates of the scans evaluated.
        num_false_positives: candidates that hit neither a nodule nor an excluded finding.
        num_ignored: candidates on excluded findings only.
        num_double_detections: hits on a found nodule beyond its best one (the script's "double
            detections on a nodule"; a candidate on two nodules counts for each).
        cpm_ci: 95 % bootstrap interval of the CPM, when bootstrapped.
        sensitivity_ci: 95 % bootstrap interval of each sensitivity, when bootstrapped.
        cpm_draws: the CPM under each draw of the bootstrap (NaN for a draw without nodules), for paired
            comparisons (:mod:`lungexp.metrics.comparison`).
    """

    cpm: float
    sensitivities: dict[float, float]
    curve: pd.DataFrame
    num_scans: int
    num_nodules: int
    num_found: int
    num_candidates: int
    num_false_positives: int
    num_ignored: int
    num_double_detections: int
    cpm_ci: tuple[float, float] | None = None
    sensitivity_ci: dict[float, tuple[float, float]] | None = None
    cpm_draws: np.ndarray | None = field(default=None, repr=False, compare=False)

    def script_counts(self) -> dict[str, int]:
        """The candidate counts, labelled as LUNA16's script prints them under "Candidate detection results"."""
        return {
            "True positives": self.num_found,
            "False positives": self.num_false_positives,
            "False negatives": self.num_nodules - self.num_found,
            "Total number of candidates": self.num_candidates,
            "Total number of nodules": self.num_nodules,
            "Ignored candidates on excluded nodules": self.num_ignored,
            "Ignored candidates which were double detections on a nodule": self.num_double_detections,
        }

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}cpm`` and ``{prefix}sens_at_{rate}_fp`` (e.g. ``test/sens_at_0.125_fp``), plus
        ``{prefix}cpm_ci_low``/``_high`` when bootstrapped."""
        metrics = {f"{prefix}cpm": self.cpm}
        metrics.update({f"{prefix}sens_at_{rate_name(rate)}_fp": value for rate, value in self.sensitivities.items()})
        if self.cpm_ci is not None:
            metrics[f"{prefix}cpm_ci_low"], metrics[f"{prefix}cpm_ci_high"] = self.cpm_ci
        return metrics


def compute_froc(
    predictions: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None = None,
    seriesuids: Sequence[str] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    resampling: ClusterResampling | None = None,
) -> FrocResult:
    """FROC curve, the sensitivities at :data:`FP_RATES` and the CPM, by LUNA16's rules (module docstring).

    Args:
        predictions: ``seriesuid, coordX, coordY, coordZ, probability`` (world mm; extra columns ignored).
        annotations: the nodules, ``seriesuid, coordX, coordY, coordZ, diameter_mm`` (checked by
            :func:`~lungexp.data.labels.annotations.check_annotations`).
        excluded: findings to ignore (``annotations_excluded.csv``), same columns (checked by
            :func:`~lungexp.data.labels.annotations.check_excluded_annotations`).
        seriesuids: the scans evaluated; default: the series in ``predictions``. Predictions and
            annotations of other series are left out.
        bootstrap: number of scan resamplings for the 95 % intervals (0: none).
        seed: seed of the resampling.
        resampling: draws of the scans (or their patients) to use instead of ``bootstrap`` new ones, so
            that the CPM is resampled with the run's other metrics (:mod:`lungexp.metrics.bootstrap`).
    """
    predictions = drop_duplicate_points(validated_table(predictions, PREDICTION_COLUMNS, "predictions"),
                                        "predictions", values=["probability"])
    scans = _scans(predictions, seriesuids)
    predictions, candidate_scan = _on_scans(predictions, scans, "predictions", warn=True)
    annotations, nodule_scan = _on_scans(_findings(check_annotations(annotations, "annotations")), scans)
    candidate_xyz = predictions[list(COORDINATES)].to_numpy()
    probability = predictions["probability"].to_numpy()

    hit_candidate, hit_nodule = _hits(candidate_scan, candidate_xyz, annotations, nodule_scan)
    on_nodule = np.zeros(len(predictions), dtype=bool)
    on_nodule[hit_candidate] = True
    found = np.zeros(len(annotations), dtype=bool)
    found[hit_nodule] = True
    best = np.full(len(annotations), -np.inf)
    np.maximum.at(best, hit_nodule, probability[hit_candidate])
    ignored = np.zeros(len(predictions), dtype=bool)
    if excluded is not None:
        excluded, excluded_scan = _on_scans(
            _findings(check_excluded_annotations(excluded, "excluded findings")), scans)
        ignored[_hits(candidate_scan, candidate_xyz, excluded, excluded_scan)[0]] = True
    ignored &= ~on_nodule
    false_positive = ~on_nodule & ~ignored

    # The scored entries: each false positive, and each found nodule once with its best probability.
    scores = np.concatenate([probability[false_positive], best[found]])
    is_nodule = np.concatenate([np.zeros(false_positive.sum(), bool), np.ones(found.sum(), bool)])
    entry_scan = np.concatenate([candidate_scan[false_positive], nodule_scan[found]])
    curve = _Curve(scores, is_nodule, entry_scan)
    num_scans, num_nodules = len(scans), len(annotations)
    if num_nodules == 0:
        warnings.warn("FROC: the scans evaluated have no nodules, so sensitivity and CPM are undefined (NaN)",
                      stacklevel=2)
    fps, sens, thresholds = curve.points(np.ones(num_scans), num_scans, num_nodules)
    sensitivities = dict(zip(FP_RATES, _sensitivities_at_rates(fps, sens), strict=True))
    cpm_ci = sensitivity_ci = cpm_draws = None
    if resampling is None and bootstrap > 0:
        resampling = ClusterResampling.draw(scans, bootstrap, seed)
    if resampling is not None:
        nodules_per_scan = np.bincount(nodule_scan, minlength=num_scans)
        resampled = _resampled_sensitivities(curve, nodules_per_scan, resampling.weights(scans))
        cpm_draws = resampled.mean(axis=1)
        cpm_ci = percentile_interval(cpm_draws)
        sensitivity_ci = {rate: percentile_interval(resampled[:, i]) for i, rate in enumerate(FP_RATES)}
    return FrocResult(
        cpm=float(np.mean(list(sensitivities.values()))),
        sensitivities=sensitivities,
        curve=pd.DataFrame({"fps_per_scan": fps, "sensitivity": sens, "threshold": thresholds}),
        num_scans=num_scans,
        num_nodules=num_nodules,
        num_found=int(found.sum()),
        num_candidates=len(predictions),
        num_false_positives=int(false_positive.sum()),
        num_ignored=int(ignored.sum()),
        num_double_detections=int(np.maximum(np.bincount(hit_nodule, minlength=num_nodules) - 1, 0).sum()),
        cpm_ci=cpm_ci,
        sensitivity_ci=sensitivity_ci,
        cpm_draws=cpm_draws,
    )


def validated_table(table: pd.DataFrame, required: Sequence[str], name: str, probabilities: Sequence[str] = (),
                    binary: Sequence[str] = ()) -> pd.DataFrame:
    """The ``required`` columns: ``seriesuid`` as text, the others as finite float64, those of ``probabilities``
    in [0, 1] and those of ``binary`` 0 or 1; a missing column or a bad value is a :class:`FrocInputError`
    naming ``name`` (e.g. the file), the column and the rows."""
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise FrocInputError(f"{name}: missing column(s) {missing}; found {list(map(str, table.columns))}. "
                             f"The FROC needs {list(required)}")
    checked = pd.DataFrame({"seriesuid": table["seriesuid"].astype(str).to_numpy()})
    for column in required[1:]:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
        bad, expected = ~np.isfinite(values), "finite numbers"
        with np.errstate(invalid="ignore"):
            if column in binary:
                bad, expected = (values != 0) & (values != 1), "0 or 1"
            elif column in probabilities:
                bad, expected = bad | (values < 0) | (values > 1), "probabilities in [0, 1]"
        if bad.any():
            rows = ", ".join(f"{row + 2} ({table[column].iloc[row]})" for row in np.flatnonzero(bad)[:5])
            raise FrocInputError(f"{name}: column '{column}' must hold {expected}, but {int(bad.sum())} row(s) do "
                                 f"not: row(s) {rows} (the header is row 1)")
        checked[column] = values
    return checked


def check_nodules_in_scope(annotations: pd.DataFrame, scans: Sequence[str], annotations_source: str,
                           scans_source: str) -> None:
    """A :class:`FrocInputError` when none of ``scans`` has a nodule of ``annotations``: the sensitivity and
    CPM would be undefined, and a CPM of such scans is a mistake in the files (other data sets), not a result."""
    if not annotations["seriesuid"].astype(str).isin(np.asarray(scans, dtype=str)).any():
        raise FrocInputError(f"{annotations_source}: none of its {len(annotations)} nodule(s) lies on the "
                             f"{len(scans)} scan(s) evaluated ({scans_source}), so sensitivity and CPM are "
                             "undefined; the annotations and the scans must be of the same data set")


def _findings(table: pd.DataFrame) -> pd.DataFrame:
    """The checked annotation columns, ``seriesuid`` as text to match the predictions'."""
    return table[list(ANNOTATION_COLUMNS)].astype({"seriesuid": str})


def _scans(predictions: pd.DataFrame, seriesuids: Sequence[str] | None) -> pd.Index:
    scans = pd.Index(pd.unique(predictions["seriesuid"] if seriesuids is None else np.asarray(seriesuids, str)))
    if scans.empty:
        raise FrocInputError("FROC: no scans to evaluate (no predictions and no seriesuids given)")
    return scans


def _on_scans(table: pd.DataFrame, scans: pd.Index, name: str = "", warn: bool = False
              ) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of the scans evaluated, and each row's scan number."""
    scan = scans.get_indexer(table["seriesuid"])
    inside = scan >= 0
    if warn and not inside.all():
        log.warning("FROC: %d %s rows of %d series not in the scans evaluated are left out",
                    int((~inside).sum()), name, table.loc[~inside, "seriesuid"].nunique())
    if inside.all():
        return table, scan
    return table[inside].reset_index(drop=True), scan[inside]


def _hits(
    candidate_scan: np.ndarray, candidate_xyz: np.ndarray, findings: pd.DataFrame, finding_scan: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """All (candidate, finding) index pairs where the candidate lies within the finding's radius.

    Candidates are sorted by scan once; each finding is then compared with its scan's slice only.
    """
    order = np.argsort(candidate_scan, kind="stable")
    start = np.searchsorted(candidate_scan[order], finding_scan, side="left")
    counts = np.searchsorted(candidate_scan[order], finding_scan, side="right") - start
    finding = np.repeat(np.arange(len(finding_scan)), counts)
    first_pair = np.repeat(np.cumsum(counts) - counts, counts)
    candidate = order[np.repeat(start, counts) + np.arange(counts.sum()) - first_pair]
    diameter = findings["diameter_mm"].to_numpy(np.float64)
    radius = np.where(diameter == UNKNOWN_DIAMETER, UNKNOWN_DIAMETER_MM, diameter) / 2 + HIT_TOLERANCE_MM
    centre = findings[list(COORDINATES)].to_numpy(np.float64)
    squared = ((candidate_xyz[candidate] - centre[finding]) ** 2).sum(axis=1)
    inside = squared <= radius[finding] ** 2
    return candidate[inside], finding[inside]


class _Curve:
    """The scored entries sorted once by descending probability, so that (re)weighting them by scan
    (the bootstrap) costs only cumulative sums, for many weightings at a time."""

    def __init__(self, scores: np.ndarray, is_nodule: np.ndarray, entry_scan: np.ndarray) -> None:
        order = np.argsort(-scores, kind="stable")
        self.scores = scores[order]
        self.is_nodule = is_nodule[order]
        self.entry_scan = entry_scan[order]
        # last entry of each run of equal probability: one operating point per distinct threshold
        self.cuts = np.r_[np.flatnonzero(np.diff(self.scores)), len(self.scores) - 1].astype(np.int64)
        if not len(self.scores):
            self.cuts = self.cuts[:0]
        self.false_positives = np.cumsum(~self.is_nodule)[self.cuts]  # unweighted, at each cut

    def points(
        self, scan_weight: np.ndarray, num_scans: int, num_nodules: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(FPs per scan, sensitivity, threshold) at every distinct probability, from (0, 0, inf)."""
        fps, sensitivity = self.weighted_points(scan_weight[None], num_scans, np.array([num_nodules], float))
        return fps[0], sensitivity[0], np.r_[np.inf, self.scores[self.cuts]]

    def weighted_points(self, scan_weights: np.ndarray, num_scans: int, num_nodules: np.ndarray,
                        num_cuts: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FPs per scan and sensitivity (NaN without nodules) under each row of ``scan_weights`` (draws x
        scans), at the first ``num_cuts`` distinct probabilities (default: all), from (0, 0)."""
        cuts = self.cuts[:num_cuts]
        end = int(cuts[-1]) + 1 if len(cuts) else 0
        weight = scan_weights[:, self.entry_scan[:end]]
        true_positives = np.cumsum(weight * self.is_nodule[:end], axis=1)[:, cuts]
        false_positives = np.cumsum(weight * ~self.is_nodule[:end], axis=1)[:, cuts]
        with np.errstate(invalid="ignore", divide="ignore"):
            sensitivity = np.where(num_nodules[:, None] > 0, true_positives / num_nodules[:, None], np.nan)
        zeros = np.zeros((len(scan_weights), 1))
        return np.hstack([zeros, false_positives / num_scans]), np.hstack([zeros, sensitivity])


def _sensitivities_at_rates(fps: np.ndarray, sensitivity: np.ndarray) -> list[float]:
    """Linear interpolation at :data:`FP_RATES`, as ``np.interp`` on the curve: between the last point at
    or below the rate and the next one (so of several points at one FP rate the highest sensitivity
    counts from that rate on); flat beyond the last point."""
    return [float(v) for v in _rows_at_rates(fps[None], sensitivity[None])[0]]


def _rows_at_rates(fps: np.ndarray, sensitivity: np.ndarray) -> np.ndarray:
    """:func:`_sensitivities_at_rates` of each row of ``fps`` and ``sensitivity`` (draws x points)."""
    rates = np.asarray(FP_RATES, dtype=np.float64)
    left = np.stack([(fps <= rate).sum(axis=1) - 1 for rate in rates], axis=1)  # rows are non-decreasing
    right = np.minimum(left + 1, fps.shape[1] - 1)
    fps_left, fps_right = np.take_along_axis(fps, left, 1), np.take_along_axis(fps, right, 1)
    sens_left, sens_right = np.take_along_axis(sensitivity, left, 1), np.take_along_axis(sensitivity, right, 1)
    span = fps_right - fps_left
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.where(span > 0, (rates - fps_left) / span, 0.0)
    return sens_left + step * (sens_right - sens_left)


def _resampled_sensitivities(curve: _Curve, nodules_per_scan: np.ndarray, scan_weights: np.ndarray) -> np.ndarray:
    """``(draws, rates)``: the sensitivity at each of :data:`FP_RATES` under each draw ``scan_weights``
    (draws x scans); NaN for a draw without nodules.

    The sensitivities up to 8 FPs per scan need only the head of the curve: first the entries down to
    :data:`HEAD_FACTOR` times that many (unweighted) false positives, then the whole curve for the draws
    whose head does not reach past the last rate."""
    num_scans = scan_weights.shape[1]
    num_nodules = scan_weights @ nodules_per_scan.astype(np.float64)
    resampled = np.full((len(scan_weights), len(FP_RATES)), np.nan)
    head = int(np.searchsorted(curve.false_positives, HEAD_FACTOR * FP_RATES[-1] * num_scans)) + 1
    todo = num_nodules > 0
    for num_cuts in (head, None):
        rows = np.flatnonzero(todo)
        step = max(1, CHUNK_ENTRIES // max(len(curve.scores), 1))
        for start in range(0, len(rows), step):
            block = rows[start:start + step]
            fps, sensitivity = curve.weighted_points(scan_weights[block], num_scans, num_nodules[block], num_cuts)
            done = fps[:, -1] > FP_RATES[-1] if num_cuts is not None else np.ones(len(block), bool)
            resampled[block[done]] = _rows_at_rates(fps[done], sensitivity[done])
            todo[block[done]] = False
    return resampled


@dataclass(frozen=True)
class FrocReference:
    """What the FROC compares candidates with: nodules, ignored findings and the scans evaluated."""

    annotations: pd.DataFrame
    excluded: pd.DataFrame | None = None
    seriesuids: Sequence[str] | None = None

    @classmethod
    def from_csv(cls, annotations_csv: str | Path, excluded_csv: str | Path | None = None,
                 seriesuids: Sequence[str] | None = None) -> FrocReference:
        """LUNA16 ``annotations.csv`` and, if the file exists, ``annotations_excluded.csv``."""
        excluded = None
        if excluded_csv is not None and Path(excluded_csv).is_file():
            excluded = read_excluded_annotations(excluded_csv)
        return cls(read_annotations(annotations_csv), excluded, seriesuids)
