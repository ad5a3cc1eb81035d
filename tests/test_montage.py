"""Worst-errors selection, radiological orientation of the views, and the CT figures."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungexp.visualize.montage import worst_errors, worst_errors_figure
from lungexp.visualize.views import central_slices


def predictions_table() -> pd.DataFrame:
    probability = np.array([0.95, 0.9, 0.2, 0.85, 0.1, 0.05, 0.6, 0.4, 0.4])
    label = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0])
    return pd.DataFrame({"label": label, "probability": probability, "seriesuid": [f"1.2.3.{i}" for i in range(9)],
                         "coordX": np.arange(9.0), "coordY": -np.arange(9.0), "coordZ": 100 + np.arange(9.0),
                         "cache_row": np.arange(9)})


def test_worst_errors_are_the_most_confident_mistakes_at_the_threshold() -> None:
    false_positives, false_negatives = worst_errors(predictions_table(), threshold=0.4, k=2)
    assert false_positives["probability"].tolist() == [0.95, 0.9]
    assert false_negatives["probability"].tolist() == [0.05, 0.1]
    # a score on the threshold is negative: the positive at 0.4 is a false negative, the negative at 0.4 is not a FP
    assert worst_errors(predictions_table(), threshold=0.4, k=9)[1]["probability"].tolist() == [0.05, 0.1, 0.4]


def test_views_follow_the_radiological_convention() -> None:
    """Patch axes are (z, y, x) = (superior, posterior, patient's left) increasing."""
    volume = np.zeros((9, 9, 9))
    volume[8, 4, 4] = 1  # superior
    volume[4, 0, 4] = 2  # anterior
    volume[4, 4, 0] = 3  # the patient's right
    views = central_slices(volume)
    assert views["axial"][0, 4] == 2 and views["axial"][4, 0] == 3  # anterior up, patient's right on the left
    assert views["coronal"][0, 4] == 1 and views["coronal"][4, 0] == 3  # superior up
    assert views["sagittal"][0, 4] == 1 and views["sagittal"][4, 0] == 2  # superior up, anterior on the left


def test_montage_figure_shows_k_of_each_kind() -> None:
    patches = np.random.default_rng(0).integers(-1000, 400, (9, 1, 8, 8, 8)).astype(np.int16)
    figure = worst_errors_figure(predictions_table(), patches, threshold=0.4, k=2,
                                 hu_window=(-1000, 400))
    titles = [sub.get_suptitle() for sub in figure.subfigs]
    assert sum(title.startswith("false positive") for title in titles) == 2
    assert sum(title.startswith("false negative") for title in titles) == 2
    assert any("p = 0.950" in title and "1.2.3.0" in title and "(0.0, -0.0, 100.0) mm" in title for title in titles)
    assert len(figure.axes) == 4 * 3
