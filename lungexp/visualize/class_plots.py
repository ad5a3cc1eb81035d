"""Figures of a head with more than two classes, from its labels and probabilities: the K×K confusion matrix,
the one-vs-rest ROC curves of a multiclass head (each class's AUROC in the legend) and its top-label
reliability diagram; for an ordinal head, the confusion over levels and the ROC at every cut (level >= 2,
>= 3, …). :func:`head_figures` gives a head's set by its kind, as the evaluation report saves them.

Labels are class indices 0 … K − 1; the probabilities are those of a predictions table
(:attr:`~lungexp.data.labels.targets.HeadSpec.probability_columns`): ``(N, K)`` class probabilities
(multiclass), ``(N, K − 1)`` P(level >= k) for k = 2 … K (ordinal), ``(N,)`` P(positive) (binary). Rows
masked for an auxiliary head (label :data:`~lungexp.data.labels.class_maps.MASKED`) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.classification import binary_auroc, binary_roc

from lungexp.data.labels.class_maps import MASKED
from lungexp.metrics.classification import reliability_bins
from lungexp.metrics.multiclass import multiclass_metrics, top_label_ece
from lungexp.metrics.ordinal import ordinal_metrics
from lungexp.models.heads import HEAD_KINDS, predicted_classes
from lungexp.utils.errors import ArgumentError, look_up_option
from lungexp.visualize.plots import reliability_figure, roc_figure

CELL_INCHES = 0.75  # a confusion-matrix cell: room for "1,234" and "100.0%"


def head_figures(kind: str, labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str],
                 title: str = "") -> dict[str, Figure]:
    """A head's figures by file name (``confusion_matrix.png``, ``roc_curves.png``, and for a multiclass head
    ``reliability_diagram.png``): ``kind`` ``binary``, ``multiclass`` or ``ordinal``, ``class_names`` in class
    order (K names; an ordinal head's levels), ``title`` the split and head they show (``test texture``).
    Masked rows (label -1) are left out; the ROC curves need both sides of a class or cut, and a class or cut
    with one side only is named in the legend without a curve."""
    look_up_option("kind", kind, HEAD_KINDS, error=ArgumentError)
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    scored = labels != MASKED
    labels, probabilities = labels[scored], probabilities[scored]
    names = [str(name) for name in class_names]
    predicted = predicted_classes(kind, torch.as_tensor(probabilities)).numpy()
    prefix = f"{title} " if title else ""
    levels = " over levels" if kind == "ordinal" else ""
    figures = {"confusion_matrix.png": class_confusion_figure(confusion_counts(labels, predicted, len(names)), names,
                                                              title=f"{prefix}confusion matrix{levels}")}
    if kind == "binary":
        figures["roc_curves.png"] = class_roc_figure(labels[:, None], probabilities[:, None], [names[1]],
                                                     title=f"{prefix}ROC")
    elif kind == "multiclass":
        metrics = multiclass_metrics(labels, probabilities, class_names=names)
        figures["roc_curves.png"] = class_roc_figure(
            labels[:, None] == np.arange(len(names)), probabilities,
            [f"{name} vs rest" for name in names], [metrics[f"auroc_{name}"] for name in names],
            title=f"{prefix}one-vs-rest ROC (macro AUROC {metrics['auroc_macro']:.3f})")
        figures["reliability_diagram.png"] = top_label_reliability_figure(labels, probabilities,
                                                                          title=f"{prefix}top-label reliability")
    else:
        metrics = ordinal_metrics(labels, probabilities)
        cuts = range(2, len(names) + 1)
        figures["roc_curves.png"] = class_roc_figure(
            labels[:, None] >= np.arange(1, len(names)), probabilities,
            [f"level ≥ {names[level - 1]}" for level in cuts], [metrics[f"auroc_ge{level}"] for level in cuts],
            title=f"{prefix}ROC at each cut of the scale")
    return figures


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts: rows the true class, columns the predicted one."""
    return np.bincount(np.asarray(labels) * num_classes + np.asarray(predicted),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_confusion_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix"
                           ) -> Figure:
    """Counts and row-normalised fractions side by side, both shaded by the fraction; rows are true classes,
    columns predictions, named by ``class_names`` (each true class's count beside its name)."""
    matrix = np.asarray(matrix)
    size = len(class_names)
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    cell = max(CELL_INCHES, 3.2 / size)
    longest = max(map(len, class_names))
    fig = Figure(figsize=(2 * cell * size + 0.16 * longest + 2.0, cell * size + 0.06 * longest + 1.2),
                 layout="constrained")
    axes = fig.subplots(1, 2)
    rows = [f"{name} (n={count:,})" for name, count in zip(class_names, matrix.sum(axis=1), strict=True)]
    for ax, text, name in ((axes[0], [f"{count:,}" for count in matrix.ravel()], "counts"),
                           (axes[1], [f"{fraction:.1%}" for fraction in fractions.ravel()], "row-normalised")):
        ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
        for (row, col), label in zip(np.ndindex(*matrix.shape), text, strict=True):
            ax.text(col, row, label, ha="center", va="center", fontsize=10 if size <= 4 else 8,
                    color="white" if fractions[row, col] > 0.5 else "black")
        ax.set_xticks(range(size), class_names, rotation=30 if longest > 4 else 0, ha="right" if longest > 4 else "center")
        ax.set_yticks(range(size), rows if ax is axes[0] else class_names)
        ax.set(xlabel="predicted", ylabel="true", title=name)
    fig.suptitle(title)
    return fig


def class_roc_figure(positives: np.ndarray, scores: np.ndarray, curves: Sequence[str],
                     aurocs: Sequence[float] | None = None, title: str = "ROC") -> Figure:
    """One ROC curve per column of ``scores`` (``(N, C)``) against the 0/1 column of ``positives`` of the same
    index, named ``curves[c]`` with its AUROC (``aurocs``; else torchmetrics') in the legend; a column whose
    ``positives`` hold one value only is listed without a curve. A single curve is :func:`roc_figure`'s."""
    positives = np.asarray(positives).astype(np.int64)
    if scores.shape[1] == 1 and 0 < positives.sum() < len(positives):
        preds, target = torch.as_tensor(scores[:, 0]), torch.as_tensor(positives[:, 0])
        fpr, tpr, _ = (t.numpy() for t in binary_roc(preds, target))
        return roc_figure(fpr, tpr, float(binary_auroc(preds, target)), title=title)
    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    ax = fig.subplots()
    for column, name in enumerate(curves):
        reached = positives[:, column]
        if not 0 < reached.sum() < len(reached):
            ax.plot([], [], " ", label=f"{name}: one side only, no curve")
            continue
        preds, target = torch.as_tensor(scores[:, column]), torch.as_tensor(reached)
        fpr, tpr, _ = (t.numpy() for t in binary_roc(preds, target))
        auroc = aurocs[column] if aurocs is not None else float(binary_auroc(preds, target))
        ax.plot(fpr, tpr, lw=2, label=f"{name} (AUROC {auroc:.3f}, n={int(reached.sum()):,})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def top_label_reliability_figure(labels: np.ndarray, probabilities: np.ndarray,
                                 title: str = "Top-label reliability") -> Figure:
    """How often the most probable class is right against its probability, per bin, with the top-label ECE
    (:func:`~lungexp.metrics.multiclass.top_label_ece`, the multiclass ``ece``)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    return reliability_figure(*reliability_bins(correct, confidence), ece=top_label_ece(probabilities, labels),
                              title=title, observed_label="observed accuracy of the top class",
                              predicted_label="probability of the top class")

