"""Paired comparison of runs within strata (``python -m lungexp.compare --strata diameter_mm:0,6,10,20``).

Per run, the stratified AUROC (:mod:`lungexp.metrics.stratified`) with its cluster-bootstrap interval; per pair,
its difference by the paired cluster bootstrap (the same resampled clusters for both runs, as
:mod:`lungexp.metrics.comparison` does for average precision), with a 95 % interval and a two-sided p; and
within each stratum that holds both classes, DeLong's paired test of the two AUROCs, as compare does on all
samples. :func:`lungexp.metrics.comparison.compare` adds these to its tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lungexp.metrics.bootstrap import ClusterResampling, ClusterStatistics, stratified_auroc_draws
from lungexp.metrics.delong import delong_test
from lungexp.metrics.stratified import Strata


@dataclass(frozen=True)
class SampleStrata:
    """The compared samples' strata: the strata and each sample's stratum (:meth:`Strata.codes`)."""

    strata: Strata
    codes: np.ndarray


def stratified_draws(labels: np.ndarray, scores: np.ndarray, strata: SampleStrata, resampling: ClusterResampling,
                     cluster: np.ndarray) -> np.ndarray:
    """One run's stratified AUROC under every draw of ``resampling`` (``cluster``: each sample's cluster number)."""
    insides = (strata.codes == code for code in range(len(strata.strata.edges)))
    statistics = [ClusterStatistics(labels[inside], scores[inside], cluster[inside], 0.5, resampling.counts.shape[1])
                  for inside in insides if inside.any()]  # 0.5: a threshold the AUROC does not use
    return stratified_auroc_draws(statistics, resampling.counts)


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p of a paired bootstrap's differences: twice the smaller share of draws on either side of 0
    (at most 1), the level at which the percentile interval would just reach 0; NaN without a finite draw."""
    finite = np.asarray(differences, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return float("nan")
    return float(min(1.0, 2 * min((finite <= 0).mean(), (finite >= 0).mean())))


def strata_pairs(labels: np.ndarray, probabilities: np.ndarray, names: Sequence[str],
                 pairs: Sequence[tuple[int, int]], strata: SampleStrata) -> tuple[pd.DataFrame, list[str]]:
    """Per stratum holding both classes and pair ``(a, b)`` of runs (rows of ``probabilities``): the counts, both
    AUROCs and DeLong's paired test of their difference. Also the strata left out, described (one class)."""
    rows, skipped = [], []
    for code, bounds in enumerate(strata.strata.ranges):
        inside = strata.codes == code
        positives = int(labels[inside].sum())
        negatives = int(inside.sum()) - positives
        stratum = f"{strata.strata.column} {bounds}"
        if positives == 0 or negatives == 0:
            skipped.append(f"{stratum} ({positives} positives, {negatives} negatives)")
            continue
        for a, b in pairs:
            test = delong_test(labels[inside], probabilities[a][inside], probabilities[b][inside])
            rows.append({"stratum": stratum, "positives": positives, "negatives": negatives, "a": names[a],
                         "b": names[b], "auroc_a": test.auroc_a, "auroc_b": test.auroc_b,
                         "delta_auroc": test.difference, "delta_auroc_ci_low": test.ci[0],
                         "delta_auroc_ci_high": test.ci[1], "delong_p": test.p_value})
    return pd.DataFrame(rows), skipped
