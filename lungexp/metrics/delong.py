"""DeLong's variance of the AUROC and his paired test of two AUROCs on the same samples.

DeLong, DeLong & Clarke-Pearson (Biometrics 1988), computed by the fast algorithm of Sun & Xu (IEEE
Signal Processing Letters 21(11), 2014): the placement values come from midranks (three rankings per
model) instead of comparing every positive with every negative, O(n log n) instead of O(m n).
Ties count one half, as in the AUROC itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

CONFIDENCE = 0.95


@dataclass(frozen=True)
class DelongAuroc:
    """AUROCs of one or more models on the same samples and their covariance (DeLong)."""

    aurocs: np.ndarray  # (k,)
    covariance: np.ndarray  # (k, k)

    def interval(self, model: int = 0, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """Wald interval ``auroc ± z sd`` of one model, clipped to [0, 1]."""
        half = norm.ppf(0.5 + confidence / 2) * math.sqrt(max(self.covariance[model, model], 0.0))
        auroc = float(self.aurocs[model])
        return max(auroc - half, 0.0), min(auroc + half, 1.0)


@dataclass(frozen=True)
class DelongTest:
    """Paired test of ``auroc_a - auroc_b`` (two-sided): the difference, its interval and p."""

    auroc_a: float
    auroc_b: float
    difference: float
    ci: tuple[float, float]
    p_value: float


def delong(labels: np.ndarray, scores: np.ndarray) -> DelongAuroc:
    """DeLong AUROCs and covariance of ``scores`` (``(n,)`` for one model or ``(k, n)`` for k models)
    against binary ``labels`` (``(n,)``, both classes needed)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positives, negatives = scores[:, labels], scores[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong's AUROC needs both classes")
    rank_all = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)  # midranks
    rank_pos, rank_neg = rankdata(positives, axis=1), rankdata(negatives, axis=1)
    # Placement values: the share of negatives below each positive, of positives above each negative.
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
    aurocs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(scores), len(scores)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(scores), len(scores)))
    return DelongAuroc(aurocs=aurocs, covariance=s10 / m + s01 / n)


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                confidence: float = CONFIDENCE) -> DelongTest:
    """DeLong's paired test of two models scored on the same samples."""
    result = delong(labels, np.stack([scores_a, scores_b]))
    covariance = result.covariance
    difference = float(result.aurocs[0] - result.aurocs[1])
    sd = math.sqrt(max(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1], 0.0))
    if sd == 0.0:  # identical rankings (or degenerate data): no evidence of a difference
        p_value = 1.0 if difference == 0.0 else 0.0
    else:
        p_value = float(2 * norm.sf(abs(difference) / sd))
    half = norm.ppf(0.5 + confidence / 2) * sd
    return DelongTest(float(result.aurocs[0]), float(result.aurocs[1]), difference,
                      (difference - half, difference + half), p_value)
