"""Labels derived from a rating column, e.g. the LIDC readers' malignancy ratings 1-5 (``data.label_rule``).

Papers turn the ratings into benign/malignant in incompatible ways (mean > 3, median, dropping the 3s, ...),
so the rule is an option of the run, logged with its params and part of its data fingerprint:

    data.label_rule: {column: malignancy, positive: ">=4", negative: "<=2"}

rows matching ``positive`` get label 1, rows matching ``negative`` label 0, the others are dropped (counted
in the log). ``conf/data/label_rule/`` holds named rules (``+data/label_rule=nodulemnist3d``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lungexp.data.labels.annotations import AnnotationError
from lungexp.utils.errors import ArgumentError

log = logging.getLogger(__name__)

OPERATORS: dict[str, Callable[[Any, float], Any]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}
_CONDITION = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$")
KEYS = ("column", "positive", "negative")
EXAMPLE = '{column: malignancy, positive: ">=4", negative: "<=2"}'


@dataclass(frozen=True)
class Condition:
    """A comparison of a column's values with a number, written ``">=4"``."""

    op: str
    value: float

    @classmethod
    def parse(cls, part: str, text: Any) -> Condition:
        """``text`` as the ``part`` (``positive`` or ``negative``) of a ``label_rule``."""
        match = _CONDITION.match(str(text)) if isinstance(text, (str, int, float)) else None
        if match is None or isinstance(text, bool):
            raise ArgumentError(f"label_rule: {part}={text!r} must be a comparison with a number: one of "
                              f"{', '.join(OPERATORS)} and a value, e.g. \">=4\"; {EXAMPLE}")
        return cls(match.group(1), float(match.group(2)))

    def matches(self, values: pd.Series) -> pd.Series:
        return OPERATORS[self.op](values, self.value)

    def __str__(self) -> str:
        return f"{self.op}{self.value:g}"


@dataclass(frozen=True)
class LabelRule:
    """``label = 1`` where ``column`` satisfies ``positive``, 0 where it satisfies ``negative``, else dropped."""

    column: str
    positive: Condition
    negative: Condition

    @classmethod
    def from_config(cls, rule: Mapping[str, Any] | None) -> LabelRule | None:
        """The rule of a ``label_rule`` mapping (None: the labels as the CSV gives them); a malformed one is an
        :class:`ArgumentError` naming ``label_rule`` (the datamodule's options add ``data.``)."""
        if rule is None:
            return None
        if not isinstance(rule, Mapping) or set(rule) != set(KEYS):
            given = sorted(rule) if isinstance(rule, Mapping) else rule
            raise ArgumentError(f"label_rule={given!r} must be null or a mapping with exactly the keys "
                              f"{', '.join(KEYS)}, e.g. {EXAMPLE}")
        column = rule["column"]
        if not isinstance(column, str) or not column:
            raise ArgumentError(f"label_rule: column={column!r} must name a column of the labels CSV")
        return cls(column, Condition.parse("positive", rule["positive"]),
                   Condition.parse("negative", rule["negative"]))

    def as_config(self) -> dict[str, str]:
        """The rule as ``data.label_rule`` spells it (normalised: ``">= 4"`` and ``">=4.0"`` are ``">=4"``)."""
        return {"column": self.column, "positive": str(self.positive), "negative": str(self.negative)}

    def apply(self, table: pd.DataFrame, source: str | Path) -> pd.DataFrame:
        """``table`` with ``label`` set by the rule and the rows matching neither condition dropped (logged with
        their count). A missing or non-numeric column, or a row matching both, is an :class:`AnnotationError`
        naming the CSV ``source`` and its lines."""
        if self.column not in table.columns:
            raise AnnotationError(f"{source}: no column '{self.column}' (the column of data.label_rule); the CSV has "
                                  f"{', '.join(map(str, table.columns))}")
        values = pd.to_numeric(table[self.column], errors="coerce")
        self._check_rows(values.isna(), table, source, "is not a number")
        positive, negative = self.positive.matches(values), self.negative.matches(values)
        self._check_rows(positive & negative, table, source,
                         f"matches both positive ({self.positive}) and negative ({self.negative}) of data.label_rule")
        kept = positive | negative
        if not kept.all():
            log.info("%s: data.label_rule %s: %d of %d rows match neither %s (positive) nor %s (negative) "
                     "and are dropped", source, self, int((~kept).sum()), len(table), self.positive, self.negative)
        return table[kept].assign(label=positive[kept].astype(int))

    def _check_rows(self, bad: pd.Series, table: pd.DataFrame, source: str | Path, problem: str) -> None:
        if bad.any():
            raise AnnotationError(f"{source}: column '{self.column}' {problem} in {int(bad.sum())} row(s) "
                                  f"(lines {csv_lines(table.index[bad])}); fix the CSV or data.label_rule")

    def __str__(self) -> str:
        return f"{self.column} {self.positive} = 1, {self.negative} = 0"


def csv_lines(index: pd.Index, shown: int = 5) -> str:
    """The CSV lines of the first ``shown`` rows of a table read in file order (header = line 1): ``3, 7``."""
    return ", ".join(str(i + 2) for i in index[:shown])


def labelled_key(cache_key: str, label_rule: LabelRule | None, target: Mapping[str, Any] | None = None) -> str:
    """The data fingerprint of a patch cache read under ``label_rule`` and a target (its
    :meth:`~lungexp.data.labels.targets.TargetOptions.fingerprint`): the cache key itself without either (labels
    are read from the CSV, not cached), else 16 hex digits of SHA-256 over the key, the rule and the target, so
    runs that label the samples differently never share a fingerprint even where they share the cached patches.
    A run with a rule and the default target (None) keeps the fingerprint it had before targets existed."""
    parts = [json.dumps(part, sort_keys=True) for part in
             (None if label_rule is None else label_rule.as_config(), target) if part is not None]
    if not parts:
        return cache_key
    return hashlib.sha256("|".join([cache_key, *parts]).encode()).hexdigest()[:16]
