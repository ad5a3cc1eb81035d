"""Class maps: which values of a labels-CSV column are which class, and which are dropped (``target.rule``).

A target (:mod:`lungexp.data.labels.targets`) reads one column per head and turns its values into class
indices 0 … K−1 with a class map. Each map states, for every class in order, the values that are that class,
and the values that are dropped; a value the map names neither way is *outside* it (an error for the primary
target, a masked sample for an auxiliary head: never relabelled silently). Named maps:

* ``texture3``: the LIDC texture rating (1 = ground glass … 5 = solid) in three classes: 1–2 ground glass,
  3–4 part-solid, 5 solid;
* ``calcified``: the LIDC calcification code (1–5 calcified patterns, 6 absent): not calcified (6) vs
  calcified (1–5);
* ``rating``: the levels 1–5 of an LIDC rating as they are (malignancy, spiculation, texture, …): value v is
  class v − 1.

A map can also be given inline: ``{classes: {low: [1, 2], high: [4, 5]}, drop: [3]}``. Its content (not its
name) is part of the data fingerprint, so editing a map changes the fingerprint of the runs read under it.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lungexp.utils.errors import ArgumentError, did_you_mean

MASKED = -1  # the class index of a sample an auxiliary head has no label for (missing, or outside its map)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")  # class and head names: they name metrics and columns (probability_<class>)
INLINE_EXAMPLE = "{classes: {low: [1, 2], high: [4, 5]}, drop: [3]}"


@dataclass(frozen=True)
class ClassAssignment:
    """What a class map makes of a column, row by row.

    Attributes:
        classes: the class index of each row, :data:`MASKED` where it has none.
        missing: the value is empty or not a number.
        dropped: the value is one the map drops.
        outside: the value is a number the map neither maps to a class nor drops.
    """

    classes: np.ndarray
    missing: np.ndarray
    dropped: np.ndarray
    outside: np.ndarray


@dataclass(frozen=True)
class ClassMap:
    """Classes 0 … K−1 of a column's values, in order, and the values dropped.

    Args:
        classes: ``(class name, values)`` per class, in class order (an ordinal target's order).
        drop: values whose rows are dropped (primary target) or masked (auxiliary head).
        name: the name it is registered under (:data:`CLASS_MAPS`); None for one given inline.
    """

    classes: tuple[tuple[str, tuple[float, ...]], ...]
    drop: tuple[float, ...] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ArgumentError(f"rule={self.spelled()} has {len(self.classes)} class(es); a class map needs at "
                                f"least 2, e.g. {INLINE_EXAMPLE}")
        seen: dict[float, str] = {}
        for class_name, values in (*self.classes, ("drop", self.drop)):
            if class_name != "drop" and not NAME_PATTERN.match(class_name):
                raise ArgumentError(f"rule: class name {class_name!r} must be letters, digits and _ (it names "
                                    "metrics and columns, e.g. probability_<class>)")
            if class_name != "drop" and not values:
                raise ArgumentError(f"rule: class {class_name!r} has no values; give it at least one")
            for value in values:
                if value in seen:
                    raise ArgumentError(f"rule: value {value:g} is in both {seen[value]!r} and {class_name!r}; "
                                        "each value may be in one class (or drop) only")
                seen[value] = class_name
        names = [class_name for class_name, _ in self.classes]
        if len(set(names)) < len(names):
            raise ArgumentError(f"rule: class names {names} repeat; each class needs its own name")

    @classmethod
    def from_config(cls, rule: str | Mapping[str, Any]) -> ClassMap:
        """The map of ``rule``: a name of :data:`CLASS_MAPS` or an inline ``{classes: {name: [values]}, drop:
        [values]}``; anything else is an :class:`ArgumentError` naming ``rule``."""
        if isinstance(rule, str):
            if rule not in CLASS_MAPS:
                raise ArgumentError(f"rule={rule!r} is no class map{did_you_mean(rule, CLASS_MAPS)}; the named maps "
                                    f"are {', '.join(CLASS_MAPS)}, or give one inline, e.g. rule={INLINE_EXAMPLE}")
            return CLASS_MAPS[rule]
        if not isinstance(rule, Mapping) or not set(rule) <= {"classes", "drop"} or "classes" not in rule:
            raise ArgumentError(f"rule={rule!r} must name a class map ({', '.join(CLASS_MAPS)}) or be a mapping "
                                f"with the keys classes (and drop), e.g. {INLINE_EXAMPLE}")
        classes = rule["classes"]
        if not isinstance(classes, Mapping):
            raise ArgumentError(f"rule: classes={classes!r} must map each class name to its values, e.g. "
                                f"{INLINE_EXAMPLE}")
        return cls(tuple((str(name), _values(f"classes.{name}", values)) for name, values in classes.items()),
                   _values("drop", rule.get("drop") or ()))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(class_name for class_name, _ in self.classes)

    def as_config(self) -> dict[str, Any]:
        """The map's content, as an inline ``rule`` spells it (whole numbers as ints): what the data fingerprint
        hashes, so that a named map edited in code changes it too."""
        return {"classes": {class_name: [_plain(value) for value in values] for class_name, values in self.classes},
                "drop": [_plain(value) for value in self.drop]}

    def to_config(self) -> str | dict[str, Any]:
        """The map as ``target.rule`` gives it: its name, or its content when given inline."""
        return self.name if self.name is not None else self.as_config()

    def spelled(self) -> str:
        """How messages name the map: its name, or its content."""
        return self.name if self.name is not None else str(self.as_config())

    def assign(self, values: pd.Series) -> ClassAssignment:
        """The class index of each of ``values`` (parsed as numbers), and which rows have none and why."""
        parsed = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        missing = np.isnan(parsed)
        classes = np.full(len(parsed), MASKED, dtype=np.int64)
        for index, (_, class_values) in enumerate(self.classes):
            classes[np.isin(parsed, class_values)] = index
        dropped = np.isin(parsed, self.drop)
        return ClassAssignment(classes, missing, dropped, ~missing & ~dropped & (classes == MASKED))

    def describe(self) -> str:
        """``ground_glass = 1, 2; part_solid = 3, 4; solid = 5`` (and ``; dropped: …``)."""
        text = "; ".join(f"{class_name} = {', '.join(f'{v:g}' for v in values)}" for class_name, values in self.classes)
        return text + (f"; dropped: {', '.join(f'{v:g}' for v in self.drop)}" if self.drop else "")


def _values(part: str, values: Any) -> tuple[float, ...]:
    """``values`` (one number or a list of them) as a tuple of floats; else an error naming ``rule.<part>``."""
    listed = [values] if isinstance(values, numbers.Real) else values
    if isinstance(listed, str | Mapping) or not isinstance(listed, Sequence) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in listed):
        raise ArgumentError(f"rule.{part}={values!r} must be a list of numbers (the column's values), e.g. "
                            f"{INLINE_EXAMPLE}")
    return tuple(float(v) for v in listed)


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _named(name: str, classes: Mapping[str, Sequence[float]], drop: Sequence[float] = ()) -> ClassMap:
    return ClassMap(tuple((class_name, tuple(map(float, values))) for class_name, values in classes.items()),
                    tuple(map(float, drop)), name)


CLASS_MAPS: Mapping[str, ClassMap] = {
    "texture3": _named("texture3", {"ground_glass": [1, 2], "part_solid": [3, 4], "solid": [5]}),
    "calcified": _named("calcified", {"not_calcified": [6], "calcified": [1, 2, 3, 4, 5]}),
    "rating": _named("rating", {str(level): [level] for level in range(1, 6)}),
}
# The map of a binary head without a rule: the column's 0/1 as given (the labels CSV's `label`).
BINARY_LABELS = ClassMap((("negative", (0.0,)), ("positive", (1.0,))))
