"""The figures of multiclass and ordinal heads (lungexp.visualize.class_plots): axes named by the classes,
each class's or cut's AUROC in the legend, masked rows left out, saved as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lungexp.metrics.multiclass import multiclass_metrics
from lungexp.metrics.ordinal import ordinal_metrics
from lungexp.models.heads import cumulative_probabilities
from lungexp.visualize.class_plots import confusion_counts, head_figures

TEXTURE = ("ground_glass", "part_solid", "solid")
LEVELS = ("1", "2", "3", "4", "5")


def multiclass_table(size: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0 … 2 (one masked row) and softmax probabilities that favour the true class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size)
    logits = rng.normal(size=(size, 3)) + 1.5 * np.eye(3)[labels]
    labels[0] = -1
    return labels, torch.softmax(torch.as_tensor(logits), dim=1).numpy()


def ordinal_table(size: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Levels 1 … 5 as class indices 0 … 4 and CORN probabilities P(level >= k) that rise with the level."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size)
    logits = (labels[:, None] - np.arange(4) - 0.5) * 1.5 + rng.normal(size=(size, 4))
    return labels, cumulative_probabilities(torch.as_tensor(logits)).numpy()


def legend(figure) -> list[str]:  # type: ignore[no-untyped-def]
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def test_multiclass_figures_name_the_classes_and_each_auroc(tmp_path: Path) -> None:
    labels, probabilities = multiclass_table()
    figures = head_figures("multiclass", labels, probabilities, TEXTURE, title="test texture")

    assert set(figures) == {"confusion_matrix.png", "roc_curves.png", "reliability_diagram.png"}
    counts, fractions = figures["confusion_matrix.png"].axes[:2]
    assert [tick.get_text() for tick in counts.get_xticklabels()] == list(TEXTURE)
    assert [tick.get_text() for tick in fractions.get_yticklabels()] == list(TEXTURE)
    expected = confusion_counts(labels[1:], probabilities[1:].argmax(axis=1), 3)
    assert expected.sum() == len(labels) - 1  # the masked row is left out
    cells = [text.get_text() for text in counts.texts]
    assert cells == [f"{count:,}" for count in expected.ravel()]
    assert [text.get_text() for text in fractions.texts][0] == f"{expected[0, 0] / expected[0].sum():.1%}"
    metrics = multiclass_metrics(labels[1:], probabilities[1:], class_names=TEXTURE)
    entries = legend(figures["roc_curves.png"])
    for name in TEXTURE:
        assert any(entry.startswith(f"{name} vs rest (AUROC {metrics[f'auroc_{name}']:.3f}") for entry in entries)
    assert f"macro AUROC {metrics['auroc_macro']:.3f}" in figures["roc_curves.png"].axes[0].get_title()
    reliability = figures["reliability_diagram.png"].axes[0]
    assert reliability.get_ylabel() == "observed accuracy of the top class"
    assert f"ECE = {metrics['ece']:.3f}" in legend(figures["reliability_diagram.png"])[1]
    for name, figure in figures.items():
        figure.savefig(tmp_path / name, dpi=100)
        assert (tmp_path / name).stat().st_size > 10_000


def test_ordinal_figures_show_levels_and_every_cut(tmp_path: Path) -> None:
    labels, cumulative = ordinal_table()
    figures = head_figures("ordinal", labels, cumulative, LEVELS, title="test malignancy")

    assert set(figures) == {"confusion_matrix.png", "roc_curves.png"}
    counts = figures["confusion_matrix.png"].axes[0]
    assert counts.get_xlabel() == "predicted" and len(counts.texts) == 25
    assert "confusion matrix over levels" in figures["confusion_matrix.png"].get_suptitle()
    metrics = ordinal_metrics(labels, cumulative)
    entries = legend(figures["roc_curves.png"])
    for level in range(2, 6):
        assert any(entry.startswith(f"level ≥ {level} (AUROC {metrics[f'auroc_ge{level}']:.3f}") for entry in entries)
    for name, figure in figures.items():
        figure.savefig(tmp_path / name, dpi=100)
        assert (tmp_path / name).stat().st_size > 10_000


def test_a_class_missing_from_the_labels_is_listed_without_a_curve() -> None:
    labels, probabilities = multiclass_table()
    labels[labels == 2] = 1
    entries = legend(head_figures("multiclass", labels, probabilities, TEXTURE)["roc_curves.png"])
    assert "solid vs rest: one side only, no curve" in entries


def test_a_binary_head_gets_its_confusion_and_roc() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(0.3 * labels + rng.uniform(0, 0.7, 200), 0, 1)
    figures = head_figures("binary", labels, scores, ("not_calcified", "calcified"))
    assert [tick.get_text() for tick in figures["confusion_matrix.png"].axes[1].get_xticklabels()] == [
        "not_calcified", "calcified"]
    assert legend(figures["roc_curves.png"])[0].startswith("AUROC = ")


def test_an_unknown_kind_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="kind"):
        head_figures("regression", np.zeros(3), np.zeros(3), ("a", "b"))
