"""The LUNA16 FROC of one predictions table under several of its score columns, side by side.

``predict detections=... fuse=...`` writes the detector's score, the classifier's probability and their
fusion for the same points; each column is taken in turn as the ``probability`` of
:func:`~lungexp.metrics.luna16_froc.compute_froc` (unchanged), on the same scans and, when bootstrapped, the
same draws of them, so the intervals of the columns are paired.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lungexp.metrics.bootstrap import ClusterResampling
from lungexp.metrics.luna16_froc import FP_RATES, FrocResult, compute_froc, rate_name

# The score columns of `predict detections=...`: detector alone, classifier alone, their fusion.
DETECTION_SCORE_COLUMNS = ("detector_score", "classifier_probability", "probability")


def default_score_columns(columns: Sequence[str]) -> list[str]:
    """:data:`DETECTION_SCORE_COLUMNS` when a table has them all (``predict detections=``), else ``probability``."""
    return list(DETECTION_SCORE_COLUMNS) if set(DETECTION_SCORE_COLUMNS) <= set(columns) else ["probability"]


def froc_by_score(
    predictions: pd.DataFrame,
    score_columns: Sequence[str],
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None = None,
    seriesuids: Sequence[str] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, FrocResult]:
    """One :class:`FrocResult` per column of ``score_columns``, each column used as the probability."""
    resampling = None
    if bootstrap > 0:
        scans = predictions["seriesuid"] if seriesuids is None else pd.Series(list(seriesuids), dtype=str)
        resampling = ClusterResampling.draw(list(pd.unique(scans)), bootstrap, seed)  # as compute_froc draws
    return {column: compute_froc(predictions.assign(probability=predictions[column]), annotations,
                                 excluded=excluded, seriesuids=seriesuids, resampling=resampling)
            for column in score_columns}


def score_table(results: dict[str, FrocResult]) -> pd.DataFrame:
    """``score, cpm, sens_at_0.125_fp ... sens_at_8_fp`` (and ``cpm_ci_low/high`` when bootstrapped), one row each."""
    return pd.DataFrame([{"score": column, **result.as_metrics()} for column, result in results.items()])


def format_score_table(results: dict[str, FrocResult]) -> str:
    """The CPM and the seven sensitivities of each score column, one line each, for the terminal."""
    width = max(len("score"), *map(len, results))
    header = f"  {'score':<{width}}  {'CPM':>6}  " + " ".join(f"{rate_name(rate):>6}" for rate in FP_RATES)
    bootstrapped = any(result.cpm_ci for result in results.values())
    lines = [header + ("  CPM 95% CI" if bootstrapped else "")]
    for column, result in results.items():
        interval = f"  [{result.cpm_ci[0]:.4f}, {result.cpm_ci[1]:.4f}]" if result.cpm_ci else ""
        lines.append(f"  {column:<{width}}  {result.cpm:.4f}  "
                     + " ".join(f"{result.sensitivities[rate]:.4f}" for rate in FP_RATES) + interval)
    return "\n".join(lines)
