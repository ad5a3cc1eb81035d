"""Matplotlib figures of test results: ROC curve, confusion matrix, score distributions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever saved

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CLASS_NAMES = ("negative", "positive")


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auroc: float, title: str = "ROC") -> Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
    ax.plot(fpr, tpr, lw=2, label=f"AUROC = {auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def confusion_matrix_figure(matrix: np.ndarray, class_names: tuple[str, str] = CLASS_NAMES,
                            title: str = "Confusion matrix") -> Figure:
    """Counts with row-normalised fractions; rows are true classes, columns predictions."""
    matrix = np.asarray(matrix)
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
    ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, f"{count}\n({fractions[row, col]:.0%})", ha="center", va="center",
                color="white" if fractions[row, col] > 0.5 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted", ylabel="true", title=title)
    return fig


def score_histogram_figure(probabilities: np.ndarray, labels: np.ndarray,
                           class_names: tuple[str, str] = CLASS_NAMES) -> Figure:
    """Predicted probability per true class: shows calibration and where the threshold cuts."""
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    bins = np.linspace(0, 1, 21)
    for value, name in enumerate(class_names):
        ax.hist(probabilities[labels == value], bins=bins, alpha=0.6, label=f"{name} (n={int((labels == value).sum())})")
    ax.set(xlabel="predicted probability of positive", ylabel="patches", title="Score distribution")
    ax.legend()
    return fig
