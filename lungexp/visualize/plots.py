"""Matplotlib figures of results computed from a predictions table: ROC, precision-recall, confusion
matrices, score distributions, reliability diagram, FROC and AUROC per stratum. Images of CT patches live in
:mod:`lungexp.visualize.montage` and :mod:`lungexp.visualize.gradcam`.

Figures are built as :class:`~matplotlib.figure.Figure` objects, not through pyplot: they need no
backend (a notebook's stays as it is) and are freed when dropped, as pyplot's are not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from lungexp.metrics.luna16_froc import FP_RATES, FrocResult, rate_name

CLASS_NAMES = ("negative", "positive")
THRESHOLD_COLOR = "tab:red"
LABEL_INCHES_PER_CHARACTER = 0.075  # tick labels at matplotlib's default 10 pt
FOREST_COLUMNS = 4  # panels to a row of the forest plot (an ordinal comparison has 8)


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auroc: float, operating_point: tuple[float, float] | None = None,
               title: str = "ROC") -> Figure:
    """ROC curve; ``operating_point`` = (1 - specificity, sensitivity) at the decision threshold."""
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(fpr, tpr, lw=2, label=f"AUROC = {auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if operating_point is not None:
        ax.plot(*operating_point, "o", color=THRESHOLD_COLOR, label="decision threshold")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def precision_recall_figure(recall: np.ndarray, precision: np.ndarray, average_precision: float,
                            prevalence: float, operating_point: tuple[float, float] | None = None,
                            title: str = "Precision-recall") -> Figure:
    """Precision against sensitivity; the chance level is the prevalence of positives."""
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.step(recall, precision, where="post", lw=2, label=f"AP = {average_precision:.3f}")
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"chance (prevalence {prevalence:.3f})")
    if operating_point is not None:
        ax.plot(*operating_point, "o", color=THRESHOLD_COLOR, label="decision threshold")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="sensitivity (recall)", ylabel="precision (PPV)", title=title)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def confusion_matrix_figure(matrix: np.ndarray, threshold: float, class_names: tuple[str, str] = CLASS_NAMES,
                            title: str = "Confusion matrix") -> Figure:
    """Counts and row-normalised fractions side by side; rows are true classes, columns predictions."""
    matrix = np.asarray(matrix)
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, values, text, name in (
        (axes[0], fractions, [f"{count:,}" for count in matrix.ravel()], "counts"),
        (axes[1], fractions, [f"{fraction:.1%}" for fraction in fractions.ravel()], "row-normalised"),
    ):
        ax.imshow(values, cmap="Blues", vmin=0, vmax=1)
        for (row, col), label in zip(np.ndindex(*matrix.shape), text, strict=True):
            ax.text(col, row, label, ha="center", va="center", fontsize=12,
                    color="white" if values[row, col] > 0.5 else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=class_names, yticklabels=class_names,
               xlabel="predicted", ylabel="true", title=name)
    fig.suptitle(f"{title} (positive if p > {threshold:.3g})")
    return fig


def score_histogram_figure(probabilities: np.ndarray, labels: np.ndarray, thresholds: dict[str, float],
                           class_names: tuple[str, str] = CLASS_NAMES, title: str = "Score distribution") -> Figure:
    """Predicted probability per true class on a log count axis (candidates are mostly negatives), with
    the decision thresholds (``{description: value}``) as vertical lines."""
    fig = Figure(figsize=(5.5, 3.5), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, 1, 41).tolist()
    for value, name in enumerate(class_names):
        ax.hist(probabilities[labels == value], bins=bins, alpha=0.6, label=f"{name} (n={int((labels == value).sum()):,})")
    for (name, threshold), style in zip(thresholds.items(), ("-", ":"), strict=False):
        ax.axvline(threshold, color=THRESHOLD_COLOR, ls=style, lw=1.5, label=f"threshold {name}: {threshold:.3g}")
    _log_counts(ax)
    ax.set(xlim=(0, 1), xlabel="predicted probability of positive", ylabel="patches", title=title)
    ax.legend(fontsize=8)
    return fig


def reliability_figure(confidence: np.ndarray, observed: np.ndarray, counts: np.ndarray, ece: float,
                       title: str = "Reliability diagram", observed_label: str = "observed fraction of positives",
                       predicted_label: str = "mean predicted probability") -> Figure:
    """Observed fraction of positives against mean predicted probability per bin (bins with patches
    only), with the patches per bin below: a calibrated model lies on the diagonal. The axis labels say what
    is binned (a multiclass head's top-label diagram: the top class's probability and how often it is right)."""
    fig = Figure(figsize=(4.5, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    used = counts > 0
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    top.plot(confidence[used], observed[used], "o-", lw=2, label=f"model (ECE = {ece:.3f})")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel=observed_label, title=title)
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    edges = np.linspace(0, 1, len(counts) + 1)
    bottom.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", alpha=0.6)
    _log_counts(bottom)
    bottom.set(xlabel=predicted_label, ylabel="patches")
    return fig


def froc_figure(result: FrocResult, title: str = "FROC") -> Figure:
    """Sensitivity against false positives per scan (log axis, 1/8 to 8), the seven LUNA16 operating
    points marked (with their 95 % bootstrap intervals when computed) and the CPM."""
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.subplots()
    curve = result.curve
    ax.plot(curve["fps_per_scan"], curve["sensitivity"], lw=2, drawstyle="default",
            label=f"CPM = {result.cpm:.3f}" + (f" [{result.cpm_ci[0]:.3f}, {result.cpm_ci[1]:.3f}]"
                                               if result.cpm_ci else ""))
    sensitivities = np.array([result.sensitivities[rate] for rate in FP_RATES])
    if result.sensitivity_ci:
        low, high = np.array([result.sensitivity_ci[rate] for rate in FP_RATES]).T
        ax.errorbar(FP_RATES, sensitivities, yerr=[sensitivities - low, high - sensitivities], fmt="o",
                    color=THRESHOLD_COLOR, capsize=3, label="LUNA16 operating points (95 % CI)")
    else:
        ax.plot(FP_RATES, sensitivities, "o", color=THRESHOLD_COLOR, label="LUNA16 operating points")
    ax.axhline(result.num_found / max(result.num_nodules, 1), color="grey", ls=":", lw=1,
               label=f"nodules hit by a candidate ({result.num_found}/{result.num_nodules})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(FP_RATES, [rate_name(rate) for rate in FP_RATES])
    ax.set(xlim=(FP_RATES[0] / 1.25, FP_RATES[-1] * 1.25), ylim=(0, 1.01), xlabel="false positives per scan",
           ylabel="sensitivity", title=f"{title} ({result.num_scans} scans)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def _log_counts(ax: Axes) -> None:
    """Log count axis (candidate sets are mostly negatives) labelled 1, 10, 100 rather than 10^k."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def forest_figure(differences: dict[str, list[tuple[str, float, float, float]]],
                  title: str = "Paired differences (95 % intervals)") -> Figure:
    """One panel per metric (``{"ΔAUROC (DeLong)": [(pair, difference, low, high), ...]}``), at most
    :data:`FOREST_COLUMNS` to a row: each pair's difference with its interval, and the zero line of no difference."""
    longest_label = max(len(row[0]) for rows in differences.values() for row in rows)
    columns = min(len(differences), FOREST_COLUMNS)
    panel_rows = -(-len(differences) // columns)
    # The pair names sit left of the first panel: room for the longest, or constrained layout clips it.
    fig = Figure(figsize=(3.2 * columns + 0.5 + LABEL_INCHES_PER_CHARACTER * longest_label,
                          (0.5 * max(map(len, differences.values())) + 1.0) * panel_rows + 0.4), layout="constrained")
    axes = fig.subplots(panel_rows, columns, sharey=True, squeeze=False).ravel()
    for ax in axes[len(differences):]:
        ax.set_visible(False)
    for ax, (metric, rows) in zip(axes, differences.items(), strict=False):
        labels = [row[0] for row in rows]
        values, low, high = (np.array([row[i] for row in rows], dtype=np.float64) for i in (1, 2, 3))
        positions = np.arange(len(rows))[::-1]
        excludes_zero = (low > 0) | (high < 0)
        ax.axvline(0, color="grey", lw=1)
        # A percentile interval need not contain its estimate: lines from bound to bound, not error bars.
        ax.hlines(positions, low, high, color="black", lw=1.5)
        ax.plot(np.r_[low, high], np.r_[positions, positions], "|", color="black", ms=8)
        ax.scatter(values, positions, color=np.where(excludes_zero, THRESHOLD_COLOR, "tab:blue"), zorder=3)
        ax.set_yticks(positions, labels)
        ax.set(xlabel=metric, ylim=(-0.7, len(rows) - 0.3))
        ax.locator_params(axis="x", nbins=5)  # signed three-decimal ticks collide at the default density
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title + ": red where the interval excludes 0")
    return fig


@dataclass(frozen=True)
class StratumAuroc:
    """One stratum's AUROC and 95 % interval (NaN where undefined: one class) and its class counts."""

    bounds: str
    auroc: float
    low: float
    high: float
    positives: int
    negatives: int


def strata_auroc_figure(strata: Sequence[StratumAuroc], stratified: tuple[float, float, float], pooled: float,
                        column: str, title: str = "AUROC within strata") -> Figure:
    """Each stratum's AUROC with its interval, its positives and negatives below it; the stratified AUROC
    (``(value, low, high)``, its interval shaded) and the plain AUROC as reference lines, chance at 0.5."""
    fig = Figure(figsize=(max(5.5, 1.3 * len(strata) + 2.5), 4.5), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(len(strata))
    value, low, high = stratified
    interval = np.isfinite(low) and np.isfinite(high)
    if interval:
        ax.axhspan(low, high, color="tab:green", alpha=0.12, lw=0)
    if np.isfinite(value):
        ax.axhline(value, color="tab:green", lw=1.5,
                   label=f"stratified AUROC {value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if interval else ""))
    ax.axhline(pooled, color="tab:purple", ls="--", lw=1.5, label=f"plain AUROC {pooled:.3f}")
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
    for x, stratum in enumerate(strata):
        if np.isfinite(stratum.auroc):
            # A percentile interval need not contain its estimate: a line from bound to bound, not error bars.
            if np.isfinite(stratum.low) and np.isfinite(stratum.high):
                ax.vlines(x, stratum.low, stratum.high, color="black", lw=1.5)
                ax.plot([x, x], [stratum.low, stratum.high], "_", color="black", ms=10)
            ax.plot(x, stratum.auroc, "o", color="tab:blue", ms=7, zorder=3)
            ax.annotate(f"{stratum.auroc:.3f}", (x, stratum.auroc), xytext=(8, 0), textcoords="offset points",
                        va="center", fontsize=9)
        else:
            ax.text(x, 0.3, "one class:\nno AUROC", ha="center", va="center", fontsize=9, color="grey",
                    bbox={"facecolor": "white", "edgecolor": "none"})
    labels = [f"{stratum.bounds}\n{stratum.positives} pos / {stratum.negatives} neg" for stratum in strata]
    ax.set_xticks(positions, labels)
    ax.set(xlim=(-0.6, len(strata) - 0.4), ylim=(0, 1.02), xlabel=f"{column} stratum (n positives / negatives)",
           ylabel="AUROC within the stratum (95 % interval)", title=title)
    ax.legend(loc="best", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return fig
