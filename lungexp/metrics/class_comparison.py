"""Paired comparison of multiclass or ordinal runs on the same test samples (``python -m lungexp.compare``).

Per run, the kind's headline metrics (:data:`HEADLINE`: multiclass ``auroc_macro``, ``balanced_accuracy``,
``f1_macro``, ``accuracy``; ordinal ``qwk``, ``mae``, ``accuracy_within1``, ``accuracy`` and ``auroc_ge<k>``
at each cut) with 95 % cluster-bootstrap intervals. Per pair, each difference by the paired cluster bootstrap
(the same resampled series or patients for both runs, :func:`~lungexp.metrics.head_metrics.resampled_metric_set`)
with its interval and two-sided p (:func:`~lungexp.metrics.stratified_comparison.bootstrap_p_value`), and
McNemar's exact test of the samples one run's predicted class gets right and the other's does not; with more than
two runs, Holm's correction of each p across the pairs. DeLong's test does not apply: a macro AUROC is a mean of
one-vs-rest AUROCs over other positives, and kappa and the error in levels are no AUROC. Runs are ranked by the
first headline metric (``auroc_macro`` or ``qwk``), and ``a`` of a pair is the better of the two by it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch

from lungexp.metrics.bootstrap import (
    CI_HIGH,
    CI_LOW,
    ClusterResampling,
    cluster_resampling,
    percentile_interval,
)
from lungexp.metrics.comparison import AlignedRuns, Comparison, holm, mcnemar
from lungexp.metrics.head_metrics import head_metric_set, resampled_metric_set
from lungexp.metrics.run_targets import RunTarget
from lungexp.metrics.stratified_comparison import bootstrap_p_value
from lungexp.models.heads import predicted_classes

HEADLINE = {"multiclass": ("auroc_macro", "balanced_accuracy", "f1_macro", "accuracy"),
            "ordinal": ("qwk", "mae", "accuracy_within1", "accuracy")}


def headline_metrics(target: RunTarget) -> tuple[str, ...]:
    """The metrics compared for ``target``: :data:`HEADLINE`, and an ordinal head's AUROC at each cut."""
    cuts = tuple(f"auroc_ge{level}" for level in range(2, len(target.class_names) + 1))
    return HEADLINE[target.kind] + (cuts if target.kind == "ordinal" else ())


def compare_classes(aligned: AlignedRuns, bootstrap: int = 1000, seed: int = 0, group_by: str = "seriesuid"
                    ) -> Comparison:
    """Every run's headline metrics and every pair's paired differences (see the module docstring);
    ``bootstrap`` 0: point values and McNemar's test only."""
    target = aligned.target
    names = headline_metrics(target)
    metric_set = head_metric_set(target.kind, target.class_names)
    labels = aligned.labels
    points = [metric_set(labels, scores, "") for scores in aligned.probabilities]
    resampling = cluster_resampling(aligned.samples, bootstrap, seed, group_by) if bootstrap > 0 else None
    draws = [_draws(aligned, scores, resampling) for scores in aligned.probabilities]
    ranking = np.array([points[i][names[0]] for i in range(len(aligned.runs))])
    order = np.argsort(-np.nan_to_num(ranking, nan=-np.inf), kind="stable")
    runs = pd.DataFrame([_run_row(aligned, i, names, points[i], draws[i]) for i in order])
    correct = [predicted_classes(target.kind, torch.as_tensor(scores)).numpy() == labels
               for scores in aligned.probabilities]
    pairs = pd.DataFrame([_pair_row(aligned, a, b, names, points, draws, correct)
                          for a, b in itertools.combinations(order, 2)])
    if len(aligned.runs) > 2:
        for column in [f"{name}_p" for name in names if draws[0]] + ["mcnemar_p"]:
            pairs[f"{column}_holm"] = holm(pairs[column].to_numpy())
    num_clusters = 0 if resampling is None else resampling.counts.shape[1]
    return Comparison(runs, pairs, len(labels), num_clusters, aligned.dropped, target=target, metrics=names)


def _draws(aligned: AlignedRuns, scores: np.ndarray, resampling: ClusterResampling | None) -> dict[str, np.ndarray]:
    if resampling is None:
        return {}
    metric_set = head_metric_set(aligned.target.kind, aligned.target.class_names)
    return resampled_metric_set(metric_set, aligned.labels, scores, aligned.samples["seriesuid"].to_numpy(),
                                resampling)


def _run_row(aligned: AlignedRuns, run: int, names: tuple[str, ...], point: dict[str, float],
             draws: dict[str, np.ndarray]) -> dict[str, object]:
    scored = aligned.runs[run]
    row: dict[str, object] = {"run": scored.name, "run_id": scored.run_id}
    for name in names:
        row[name] = point[name]
        if draws:
            row[f"{name}{CI_LOW}"], row[f"{name}{CI_HIGH}"] = percentile_interval(draws[name])
    return row


def _pair_row(aligned: AlignedRuns, a: int, b: int, names: tuple[str, ...], points: list[dict[str, float]],
              draws: list[dict[str, np.ndarray]], correct: list[np.ndarray]) -> dict[str, object]:
    row: dict[str, object] = {"a": aligned.runs[a].name, "b": aligned.runs[b].name}
    for name in names:
        row[f"delta_{name}"] = points[a][name] - points[b][name]
        if draws[a]:
            difference = draws[a][name] - draws[b][name]  # the same draws for both runs: paired
            row[f"delta_{name}{CI_LOW}"], row[f"delta_{name}{CI_HIGH}"] = percentile_interval(difference)
            row[f"{name}_p"] = bootstrap_p_value(difference)
    only_a, only_b = int((correct[a] & ~correct[b]).sum()), int((~correct[a] & correct[b]).sum())
    row.update({"mcnemar_a_only": only_a, "mcnemar_b_only": only_b, "mcnemar_p": mcnemar(only_a, only_b)})
    return row
