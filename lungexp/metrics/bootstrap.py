"""95 % intervals by the cluster bootstrap: whole series (or patients) resampled with replacement.

Patches of one scan are not independent samples (they share the scan, its reader and its patient), so
the unit of resampling is the series, or the patient with ``data.split.group_by``. One
:class:`ClusterResampling` is drawn per evaluation and every metric is computed on the same draws
(paired comparisons use the same draws for both runs, :mod:`lungexp.metrics.comparison`).

A draw is a vector of how often each cluster was picked; a patch weighs as much as its cluster. Each
metric is reduced once to per-cluster sufficient statistics (:class:`ClusterStatistics`), so all
draws together cost a few matrix products (``scripts/bench_bootstrap.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lungexp.data.labels.splits import group_column
from lungexp.metrics.classification import CALIBRATION_BINS, THRESHOLD_METRICS, calibration_bin

CONFIDENCE = 0.95
CHUNK_ELEMENTS = 4_000_000  # draws x patches per block: bounded memory (32 MB per float64 array)
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
RESAMPLED = ("auroc", "average_precision", "ece", *(f"at_threshold/{name}" for name in THRESHOLD_METRICS))


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The order statistics sorted[floor(0.025 n)] and sorted[floor(0.975 n)] of the finite values (LUNA16's
    script); NaN when there are none (e.g. no draw had both classes)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    if not len(ordered):
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low = ordered[int(math.floor(tail * len(ordered)))]
    high = ordered[min(int(math.floor((1.0 - tail) * len(ordered))), len(ordered) - 1)]
    return float(low), float(high)


@dataclass(frozen=True)
class ClusterResampling:
    """``samples`` draws of the clusters with replacement.

    Attributes:
        cluster_of: cluster number of each series (index: seriesuid).
        counts: ``(samples, clusters)``: how often each cluster was drawn in each draw.
    """

    cluster_of: pd.Series
    counts: np.ndarray

    @classmethod
    def draw(cls, seriesuids: Sequence[str], samples: int, seed: int = 0,
             clusters: Sequence[str] | None = None) -> ClusterResampling:
        """Draw clusters of ``seriesuids``: each series its own, or ``clusters[i]`` (e.g. its patient)."""
        series = np.asarray(seriesuids, dtype=str)
        table = pd.DataFrame({"series": series, "cluster": series if clusters is None else np.asarray(clusters, str)})
        table = table.drop_duplicates("series")
        codes, uniques = pd.factorize(table["cluster"])
        num = len(uniques)
        drawn = np.random.default_rng(seed).integers(num, size=(samples, num))
        offsets = (drawn + np.arange(samples)[:, None] * num).ravel()
        counts = np.bincount(offsets, minlength=samples * num).reshape(samples, num).astype(np.float64)
        return cls(pd.Series(codes, index=table["series"].to_numpy()), counts)

    @property
    def samples(self) -> int:
        return len(self.counts)

    def cluster_index(self, seriesuids: Sequence[str]) -> np.ndarray:
        """The cluster number of each given series (all must be among the drawn ones)."""
        index = self.cluster_of.index.get_indexer(np.asarray(seriesuids, dtype=str))
        if (index < 0).any():
            missing = np.asarray(seriesuids, dtype=str)[index < 0][0]
            raise KeyError(f"series {missing} is not among the resampled clusters")
        return self.cluster_of.to_numpy()[index]

    def weights(self, seriesuids: Sequence[str]) -> np.ndarray:
        """``(samples, len(seriesuids))``: each series' weight in each draw (its cluster's count)."""
        return self.counts[:, self.cluster_index(seriesuids)]


class ClusterStatistics:
    """One run's predictions reduced to per-cluster sufficient statistics, so that a draw's metrics are small
    matrix products in the cluster counts (exact, ties included):

    * AUROC: ``w' A w / (P N)`` with ``A[c, d]`` the positive-negative pairs of clusters c and d ranked
      right (ties one half), ``P``, ``N`` the drawn positives and negatives (``w' positives``, ``w' negatives``);
    * average precision (step-wise, as torchmetrics): the mean over drawn positives of the precision at
      their score, from the positives and negatives of each cluster scoring at least as high;
    * thresholded metrics and ECE: each cluster's confusion counts and calibration-bin sums.
    """

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray, cluster: np.ndarray, threshold: float,
                 num_clusters: int) -> None:
        labels = np.asarray(labels).astype(bool)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        cluster = np.asarray(cluster, dtype=np.int64)
        positive_score, self.positive_cluster = probabilities[labels], cluster[labels]
        below_neg, equal_neg = _ranked_against(positive_score, probabilities[~labels], cluster[~labels], num_clusters)
        below_pos, equal_pos = _ranked_against(positive_score, positive_score, self.positive_cluster, num_clusters)
        self.pairs = np.zeros((num_clusters, num_clusters))
        np.add.at(self.pairs, self.positive_cluster, below_neg + 0.5 * equal_neg)
        self.negatives = np.bincount(cluster[~labels], minlength=num_clusters).astype(np.float64)
        self.positives = np.bincount(self.positive_cluster, minlength=num_clusters).astype(np.float64)
        # Per positive and cluster: the positives and negatives scoring at least as high as it.
        self.positives_above = self.positives - below_pos
        self.negatives_above = self.negatives - below_neg
        predicted = probabilities > threshold
        self.confusion = _per_cluster(cluster * 4 + labels * 2 + predicted, num_clusters, 4)  # tn, fp, fn, tp
        width = CALIBRATION_BINS + 1  # torchmetrics' bins and one for probability 1
        binned = cluster * width + calibration_bin(probabilities)
        self.bin_count = _per_cluster(binned, num_clusters, width)
        self.bin_probability = _per_cluster(binned, num_clusters, width, probabilities)
        self.bin_positive = _per_cluster(binned, num_clusters, width, labels.astype(np.float64))

    def metrics(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric of :data:`RESAMPLED` under each draw (rows of ``counts``); NaN where undefined."""
        tn, fp, fn, tp = (counts @ self.confusion).T
        num_pos, num_neg = fn + tp, tn + fp
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "auroc": np.einsum("bc,cd,bd->b", counts, self.pairs, counts) / (num_pos * num_neg),
                "average_precision": self._average_precision(counts) / num_pos,
                "ece": np.abs(counts @ self.bin_probability - counts @ self.bin_positive).sum(axis=1)
                / (counts @ self.bin_count).sum(axis=1),
                "at_threshold/accuracy": (tp + tn) / (tp + tn + fp + fn),
                "at_threshold/precision": tp / (tp + fp),
                "at_threshold/sensitivity": tp / num_pos,
                "at_threshold/specificity": tn / num_neg,
                "at_threshold/f1": 2 * tp / (2 * tp + fp + fn),
            }

    def _average_precision(self, counts: np.ndarray) -> np.ndarray:
        """Sum over drawn positives of the precision at their score, per draw (in blocks of draws)."""
        total = np.zeros(len(counts))
        step = max(1, CHUNK_ELEMENTS // max(len(self.positive_cluster), 1))
        for start in range(0, len(counts), step):
            block = counts[start:start + step]
            above_pos, above_neg = block @ self.positives_above.T, block @ self.negatives_above.T
            with np.errstate(invalid="ignore", divide="ignore"):
                precision = np.where(above_pos > 0, above_pos / (above_pos + above_neg), 0.0)
            total[start:start + step] = (block[:, self.positive_cluster] * precision).sum(axis=1)
        return total


def _ranked_against(scores: np.ndarray, others: np.ndarray, other_cluster: np.ndarray, num_clusters: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(len(scores), clusters)``: how many of each cluster's ``others`` score below, and equal to, each score."""
    below = np.zeros((len(scores), num_clusters))
    equal = np.zeros((len(scores), num_clusters))
    order = np.lexsort((others, other_cluster))
    sorted_scores, sorted_cluster = others[order], other_cluster[order]
    bounds = np.searchsorted(sorted_cluster, np.arange(num_clusters + 1))
    for c in np.flatnonzero(np.diff(bounds)):
        cluster_scores = sorted_scores[bounds[c]:bounds[c + 1]]
        left = np.searchsorted(cluster_scores, scores, side="left")
        below[:, c] = left
        equal[:, c] = np.searchsorted(cluster_scores, scores, side="right") - left
    return below, equal


def _per_cluster(code: np.ndarray, num_clusters: int, width: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(code, weights=weights, minlength=num_clusters * width).reshape(num_clusters, width).astype(
        np.float64)


def cluster_statistics(predictions: pd.DataFrame, threshold: float, resampling: ClusterResampling
                       ) -> ClusterStatistics:
    """A predictions table (``seriesuid, label, probability``) reduced to the statistics of ``resampling``'s
    clusters (the table may hold some of them only, e.g. one stratum's samples)."""
    return ClusterStatistics(predictions["label"].to_numpy(), predictions["probability"].to_numpy(),
                             resampling.cluster_index(predictions["seriesuid"]), threshold, resampling.counts.shape[1])


def resampled_metrics(predictions: pd.DataFrame, threshold: float, resampling: ClusterResampling
                      ) -> dict[str, np.ndarray]:
    """Each metric of :data:`RESAMPLED` of a predictions table (``seriesuid, label, probability``) under
    every draw of ``resampling``."""
    return cluster_statistics(predictions, threshold, resampling).metrics(resampling.counts)


def stratified_auroc_draws(strata: Sequence[ClusterStatistics], counts: np.ndarray) -> np.ndarray:
    """The stratified AUROC (:mod:`lungexp.metrics.stratified`) under each draw of ``counts``, from each
    stratum's statistics: the within-stratum pairs ranked right over the within-stratum pairs, both summed
    over strata (NaN where a draw has no stratum with both classes)."""
    if not strata:
        return np.full(len(counts), np.nan)
    pairs = sum(stratum.pairs for stratum in strata)
    compared = sum((counts @ stratum.positives) * (counts @ stratum.negatives) for stratum in strata)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("bc,cd,bd->b", counts, pairs, counts) / compared


def interval_metrics(resampled: dict[str, np.ndarray], prefix: str) -> dict[str, float]:
    """``{prefix}{name}_ci_low`` and ``_ci_high`` of every resampled metric."""
    metrics = {}
    for name, values in resampled.items():
        metrics[f"{prefix}{name}{CI_LOW}"], metrics[f"{prefix}{name}{CI_HIGH}"] = percentile_interval(values)
    return metrics


def cluster_resampling(predictions: pd.DataFrame, samples: int, seed: int = 0, group_by: str = "seriesuid",
                       seriesuids: Sequence[str] | None = None) -> ClusterResampling:
    """The draws of a predictions table's clusters: its series (and ``seriesuids``, e.g. the FROC's scans
    without candidates), grouped by the ``group_by`` column (``auto``: as the splits group them) when the table
    has it."""
    group_by = group_column(group_by, predictions.columns)
    first = predictions.drop_duplicates("seriesuid")  # one row per series (hashing, not sorting, the uids)
    series = first["seriesuid"].astype(str).to_numpy()
    clusters = None
    if group_by != "seriesuid" and group_by in predictions:
        clusters = first[group_by].astype(str).to_numpy()
    if seriesuids is not None:
        extra = np.setdiff1d(np.asarray(seriesuids, dtype=str), series)
        series = np.concatenate([series, extra])
        clusters = None if clusters is None else np.concatenate([clusters, extra])
    return ClusterResampling.draw(series, samples, seed, clusters)


def with_interval(metrics: Mapping[str, float], name: str, digits: int = 3) -> str:
    """``0.845 [0.801, 0.889]``: the metric and, when logged, its 95 % interval; ``[0.801, 0.889]`` for an
    interval alone (``test/auroc_delong``)."""
    value, low, high = (metrics.get(key) for key in (name, f"{name}{CI_LOW}", f"{name}{CI_HIGH}"))
    parts = [] if value is None else [f"{value:.{digits}f}"]
    if low is not None and high is not None:
        parts.append(f"[{low:.{digits}f}, {high:.{digits}f}]")
    return " ".join(parts)


def summary_names(metrics: Mapping[str, float]) -> list[str]:
    """The metric names to show, each once: interval bounds folded into their metric (see :func:`with_interval`)."""
    return sorted({name.removesuffix(CI_LOW).removesuffix(CI_HIGH) for name in metrics})
