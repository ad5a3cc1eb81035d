"""The console summary that ends a training run, an ``evaluate`` run and a cross-validation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pytorch_lightning.utilities import rank_zero_only

from lungexp.metrics.bootstrap import summary_names, with_interval

RULE = "=" * 72


@rank_zero_only
def print_summary(title: str, lines: Iterable[str]) -> None:
    """``title`` and ``lines`` between two rules, printed once (by rank 0 under DDP)."""
    print("\n".join(["", RULE, title, *lines, RULE]))


def metric_lines(metrics: Mapping[str, float], width: int) -> list[str]:
    """One line per metric, its name padded to ``width``, each with its 95 % interval when logged."""
    return [f"  {name:<{width}} {with_interval(metrics, name)}" for name in summary_names(metrics)]
