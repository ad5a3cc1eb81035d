"""The worst errors at the decision threshold, shown on CT: what a clinician checks first.

The k highest-scoring false positives (confident alarms on non-nodules) and the k lowest-scoring
false negatives (nodules the model is surest are not), each as axial, coronal and sagittal slices
through the candidate with its probability, series and world position.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lungexp.visualize.views import draw_views, short_uid


def worst_errors(predictions: pd.DataFrame, threshold: float, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(false positives by descending probability, false negatives by ascending probability), k of each."""
    positive = predictions["probability"] > threshold
    false_positives = predictions[positive & (predictions["label"] == 0)].nlargest(k, "probability")
    false_negatives = predictions[~positive & (predictions["label"] == 1)].nsmallest(k, "probability")
    return false_positives, false_negatives


def worst_errors_figure(predictions: pd.DataFrame, patches: np.ndarray, threshold: float, k: int,
                        hu_window: tuple[float, float]) -> Figure:
    """False positives on the left, false negatives on the right, one row per rank.

    Args:
        predictions: ``label, probability, seriesuid, coordX, coordY, coordZ, cache_row``.
        patches: ``(N, C, z, y, x)`` HU patches indexed by ``cache_row``; the first (finest) channel is shown.
        threshold: the decision threshold (positive if ``probability > threshold``).
        k: errors of each kind.
        hu_window: grey-level window in HU.
    """
    columns = dict(zip(("false positives", "false negatives"), worst_errors(predictions, threshold, k), strict=True))
    rows = max(1, max(len(errors) for errors in columns.values()))
    fig = Figure(figsize=(10.5, 2.3 * rows + 0.5), layout="constrained")
    fig.suptitle(f"Worst errors at threshold {threshold:.3g}: highest-scoring false positives, "
                 f"lowest-scoring false negatives", fontsize=11)
    cells = fig.subfigures(rows, 2, squeeze=False)
    for column, (kind, errors) in enumerate(columns.items()):
        if errors.empty:
            cells[0, column].text(0.5, 0.5, f"no {kind}", ha="center", va="center")
        for row, error in enumerate(errors.itertuples(index=False)):
            cell = cells[row, column]
            draw_views(cell.subplots(1, 3), np.asarray(patches[int(error.cache_row)])[0], hu_window)
            cell.suptitle(f"{kind[:-1]} #{row + 1}: p = {error.probability:.3f}   {short_uid(str(error.seriesuid))}\n"
                          f"world (x, y, z) = ({error.coordX:.1f}, {error.coordY:.1f}, {error.coordZ:.1f}) mm",
                          fontsize=8)
    return fig
