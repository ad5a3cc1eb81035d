"""The console summary that ends a training run, an ``evaluate`` run and a cross-validation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pytorch_lightning.utilities import rank_zero_only

from lungexp.metrics.bootstrap import summary_names, with_interval
from lungexp.metrics.stratified import STRATUM_COUNTS, stratum_prefixes
from lungexp.utils.log_files import record_in_log_files

RULE = "=" * 72


@rank_zero_only
def print_summary(title: str, lines: Iterable[str]) -> None:
    """``title`` and ``lines`` between two rules, printed once (by rank 0 under DDP), and kept in the run
    folder's log file."""
    text = "\n".join(["", RULE, title, *lines, RULE])
    print(text)
    record_in_log_files(text)


def whole_split_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` without those of single strata (``test/diameter_mm_6-10/...``), which
    :func:`metric_lines` shows as one line per stratum."""
    strata = tuple(stratum_prefixes(metrics))
    return {name: value for name, value in metrics.items() if not name.startswith(strata)} if strata else dict(metrics)


def metric_lines(metrics: Mapping[str, float], width: int) -> list[str]:
    """One line per metric, its name padded to ``width``, each with its 95 % interval when logged (the stratified
    AUROC among them); with ``eval.strata``, then one line per stratum: its AUROC and its positives and negatives."""
    lines = [f"  {name:<{width}} {with_interval(metrics, name)}" for name in summary_names(whole_split_metrics(metrics))]
    strata = stratum_prefixes(metrics)
    if strata:
        lines.append("  AUROC within each stratum (positives/negatives):")
    for stratum in strata:
        auroc = with_interval(metrics, f"{stratum}auroc") or "- (one class)"
        positives, negatives = (int(metrics[f"{stratum}{count}"]) for count in STRATUM_COUNTS)
        lines.append(f"    {stratum.rstrip('/'):<{width - 2}} {auroc}  ({positives}/{negatives})")
    return lines
