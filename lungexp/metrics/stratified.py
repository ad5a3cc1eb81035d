"""What a model knows beyond one variable: the AUROC within strata of it (``eval.strata``).

On LIDC malignancy, larger nodules are more often malignant: nodule diameter alone ranks malignant above
benign with AUROC ~0.9. A model's plain AUROC mixes what it learnt about size with what it learnt beyond it.
The stratified AUROC compares each positive only with the negatives of its own stratum (e.g. nodules of 6 to
10 mm): the probability that a positive outranks a negative of the same stratum, pooled over strata::

    sum over strata of (concordant pairs + ties / 2)  /  sum over strata of (positives x negatives)

so the stratifying variable itself scores about 0.5 in narrow strata, and a model scores above 0.5 only by
what it ranks right within them. Strata lacking a class contribute no pairs; with no pair at all the value
is NaN. Each stratum is ranked once (midranks, Mann-Whitney), O(n log n).

Strata are half-open intervals of a numeric column, ``[edges[i], edges[i+1])``, the last one open-ended
(``[edges[-1], inf)``). A value below the first edge, or no number at all, is refused (:class:`StrataError`
naming the column and the first rows): a sample silently put in the wrong stratum would change the result.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from lungexp.utils.errors import ConfigError, LungexpError

EXAMPLE = "{column: diameter_mm, edges: [0, 6, 10, 20]}"
KEYS = ("column", "edges")
STRATUM_COUNTS = ("positives", "negatives")  # logged per stratum: ``<prefix><stratum>/positives``
SHOWN_ROWS = 5
# Characters MLflow allows in a metric name; others in a column's name become ``_`` in the metric names.
_NOT_IN_METRIC_NAMES = re.compile(r"[^\w\-. /]")


class StrataError(LungexpError):
    """A stratifying column without a number, or below the first edge, in some rows (named in the message)."""


@dataclass(frozen=True)
class Strata:
    """Half-open intervals of ``column``: ``[edges[0], edges[1])``, ..., ``[edges[-1], inf)``; made checked by
    :meth:`checked` or :meth:`from_config`.

    Args:
        column: a numeric column of the sample table (e.g. ``diameter_mm`` of the labels CSV).
        edges: the strata's lower bounds, finite and strictly increasing; one edge is one stratum.
    """

    column: str
    edges: tuple[float, ...]

    @classmethod
    def checked(cls, column: Any, edges: Any, key: str) -> Strata:
        """The strata of ``column`` and ``edges``, or a :class:`ConfigError` naming ``<key>.column`` or
        ``<key>.edges`` (``key``: where they were given, e.g. ``eval.strata``)."""
        if not isinstance(column, str) or not column:
            raise ConfigError(f"{key}.column={column!r} must name a numeric column of the samples; e.g. {EXAMPLE}")
        if isinstance(edges, Sequence) and not isinstance(edges, str | bytes):
            edges = list(edges)  # a list of the config (ListConfig) too
        if not isinstance(edges, list) or not edges or not all(
                isinstance(edge, numbers.Real) and not isinstance(edge, bool) and math.isfinite(edge) for edge in edges):
            raise ConfigError(f"{key}.edges={edges!r} must be a list of one or more finite numbers, the strata's "
                              f"lower bounds; e.g. {EXAMPLE}")
        if any(high <= low for low, high in zip(edges, edges[1:], strict=False)):
            raise ConfigError(f"{key}.edges={edges!r} must increase strictly: each edge is the lower bound of the "
                              f"next stratum; e.g. {EXAMPLE}")
        return cls(column, tuple(float(edge) for edge in edges))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Strata | None, key: str) -> Strata | None:
        """The strata of ``{column, edges}`` given as ``key`` (None: no strata), checked (:meth:`checked`)."""
        if config is None or isinstance(config, Strata):
            return config
        if not isinstance(config, Mapping) or set(config) != set(KEYS):
            given = sorted(config) if isinstance(config, Mapping) else config
            raise ConfigError(f"{key}={given!r} must be null or a mapping with exactly the keys "
                              f"{', '.join(KEYS)}; e.g. {EXAMPLE}")
        return cls.checked(config["column"], config["edges"], key)

    def as_config(self) -> dict[str, Any]:
        """The strata as the config spells them: ``{column, edges}`` (plain values)."""
        return {"column": self.column, "edges": list(self.edges)}

    @property
    def ranges(self) -> list[str]:
        """Each stratum's bounds: ``<low>-<high>``, the last ``<low>-inf``."""
        bounds = [*map(_edge_text, self.edges), "inf"]
        return [f"{low}-{high}" for low, high in zip(bounds, bounds[1:], strict=False)]

    @property
    def names(self) -> list[str]:
        """Each stratum's name in metric names: ``<column>_<low>-<high>`` (characters MLflow refuses in the
        column's name as ``_``)."""
        column = _NOT_IN_METRIC_NAMES.sub("_", self.column)
        return [f"{column}_{bounds}" for bounds in self.ranges]

    def codes(self, values: pd.Series | np.ndarray, source: str,
              describe: Callable[[np.ndarray], list[str]] | None = None) -> np.ndarray:
        """Each value's stratum (0 to ``len(edges) - 1``). A value that is no number, or lies below the first
        edge, is a :class:`StrataError` naming ``source``, the column and the first such rows, each as
        ``describe(positions)`` gives them (default: ``row <position + 1>``)."""
        numbers_ = pd.to_numeric(pd.Series(np.asarray(values)), errors="coerce").to_numpy(np.float64)
        describe = describe or (lambda rows: [f"row {row + 1}" for row in rows])
        for bad, problem, remedy in (
                (~np.isfinite(numbers_), "has no number", "fill them in, or drop those rows"),
                (numbers_ < self.edges[0], f"is below the first edge {_edge_text(self.edges[0])}",
                 "lower the first edge (the strata are [edge, next edge))")):
            if bad.any():
                shown = "; ".join(describe(np.flatnonzero(bad)[:SHOWN_ROWS]))
                raise StrataError(f"{source}: column '{self.column}' {problem} in {int(bad.sum())} row(s) "
                                  f"(first: {shown}); {self}: {remedy}")
        return np.searchsorted(np.asarray(self.edges), numbers_, side="right") - 1

    def __str__(self) -> str:
        return f"strata of {self.column} [{', '.join(map(_edge_text, self.edges))}]"


def _edge_text(edge: float) -> str:
    """An edge as metric names hold it: ``6``, ``2.5``, ``-10``, never an exponent (no ``+`` in names)."""
    return np.format_float_positional(edge, trim="-")


def stratum_pairs(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """``(concordant + ties / 2, positives x negatives)`` of one stratum: the Mann-Whitney U of the positives'
    midranks, O(n log n)."""
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return 0.0, 0.0
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float(ranks[labels].sum() - positives * (positives + 1) / 2), float(positives * negatives)


def stratified_auroc(labels: np.ndarray, scores: np.ndarray, strata: np.ndarray) -> float:
    """The probability that a positive outranks a negative of its own stratum (ties one half), pooled over
    strata (see the module doc); ``strata`` holds each sample's stratum (any hashable codes). NaN without a
    stratum that has both classes."""
    labels, scores, strata = np.asarray(labels), np.asarray(scores, dtype=np.float64), np.asarray(strata)
    concordant = compared = 0.0
    for stratum in np.unique(strata):
        inside = strata == stratum
        pairs = stratum_pairs(labels[inside], scores[inside])
        concordant, compared = concordant + pairs[0], compared + pairs[1]
    return concordant / compared if compared else math.nan


def stratum_prefixes(metrics: Mapping[str, float]) -> list[str]:
    """The stratum prefixes among metric names (``test/diameter_mm_6-10/``: those with a ``positives`` count),
    in the order of their lower edges."""
    prefixes = [name.removesuffix(STRATUM_COUNTS[0]) for name in metrics if name.endswith(f"/{STRATUM_COUNTS[0]}")]
    return sorted(prefixes, key=_lower_edge)


def _lower_edge(prefix: str) -> float:
    match = re.search(r"_(-?[\d.]+)-(?:-?[\d.]+|inf)/$", prefix)
    return float(match.group(1)) if match else math.inf
