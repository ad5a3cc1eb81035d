"""What each sample is and which head the network gets: the ``target`` options, checked before any slow work.

``conf/target/`` holds one file per option (``target=binary`` is the default: one logit on the labels CSV's
0/1 ``label``, as before targets existed). A single-head target is ``{kind, column, rule, class_weights}``:

* ``binary``: two classes, one logit; ``rule: null`` reads the column's 0/1 as given;
* ``multiclass``: K >= 3 classes from ``column`` by the class map ``rule``
  (:mod:`lungexp.data.labels.class_maps`), a softmax head; ``class_weights`` (null, ``auto`` or K numbers)
  weighs the cross-entropy;
* ``ordinal``: K >= 3 ordered levels (the map's class order), K − 1 cumulative logits.

``kind: multitask`` is ``{primary: <head>, auxiliary: {<name>: <head>, ...}}``: each head has its own kind,
column (an auxiliary's defaults to its name), rule and loss ``weight``. A row the primary's rule drops is
dropped; a row whose auxiliary value is missing or outside that head's rule is masked for that head only
(:data:`~lungexp.data.labels.class_maps.MASKED`, counted in the log).

A problem is an :class:`~lungexp.utils.errors.ArgumentError` naming the option under ``target``
(``rule``, ``auxiliary.texture.weight``); :func:`lungexp.config.check.check` names the key (``target.rule``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungexp.data.labels.annotations import AnnotationError
from lungexp.data.labels.class_maps import BINARY_LABELS, MASKED, NAME_PATTERN, ClassAssignment, ClassMap
from lungexp.data.labels.label_rules import csv_lines
from lungexp.utils.errors import ArgumentError, check_number, did_you_mean, look_up_option, named_under

log = logging.getLogger(__name__)

HEAD_KINDS = ("binary", "multiclass", "ordinal")
MULTITASK = "multitask"
TARGET_KINDS = (*HEAD_KINDS, MULTITASK)
PRIMARY_NAME = "label"  # the primary head's name: the sample table's `label` column; its metrics keep their names
MIN_CLASSES = {"binary": 2, "multiclass": 3, "ordinal": 3}
SINGLE_KEYS = ("kind", "column", "rule", "class_weights")
HEAD_KEYS = (*SINGLE_KEYS, "weight")
MULTITASK_KEYS = ("kind", "primary", "auxiliary")


# The validation metric each kind of primary head is optimised by, unless optimized_metric says otherwise.
OPTIMIZED_METRICS = {"binary": "val/auroc", "multiclass": "val/auroc_macro", "ordinal": "val/qwk"}


def optimized_metric(target: Mapping[str, Any] | None) -> str:
    """The default ``optimized_metric`` of a ``target`` group as composed (``${target_metric:${target}}`` in
    conf/config.yaml): its primary head's :data:`OPTIMIZED_METRICS` entry (a kind it does not know: the binary
    one, and the target's own check names the kind)."""
    node = target or {}
    kind = node.get("kind", "binary")
    if kind == MULTITASK:
        primary = node.get("primary")
        kind = primary.get("kind", "binary") if isinstance(primary, Mapping) else "binary"
    return OPTIMIZED_METRICS.get(kind, OPTIMIZED_METRICS["binary"])


@dataclass(frozen=True)
class HeadSpec:
    """One head of the network: the column it learns, how its values become classes, and its loss.

    Args:
        name: ``label`` for the primary head; an auxiliary head's key under ``target.auxiliary``.
        kind: ``binary``, ``multiclass`` or ``ordinal``.
        column: the labels-CSV column it reads.
        rule: the class map as given; None: a binary head's 0/1 as given (:data:`BINARY_LABELS`).
        weight: its loss's weight in a multitask target (> 0).
        class_weights: a multiclass head's cross-entropy weights: None, ``auto`` (the training split's
            ``N / (K n_c)``) or one positive number per class.
    """

    name: str = PRIMARY_NAME
    kind: str = "binary"
    column: str = "label"
    rule: ClassMap | None = None
    weight: float = 1.0
    class_weights: str | tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        look_up_option("kind", self.kind, HEAD_KINDS, error=ArgumentError)
        if not isinstance(self.column, str) or not self.column:
            raise ArgumentError(f"column={self.column!r} must name a column of the labels CSV (data.labels_csv)")
        if self.rule is None and self.kind != "binary":
            raise ArgumentError(f"rule=null: a {self.kind} head needs a class map saying which values of "
                                f"'{self.column}' are which class: texture3, calcified, rating, or one inline",
                                "kind")
        minimum = MIN_CLASSES[self.kind]
        count = self.class_map.num_classes
        if count < minimum or (self.kind == "binary" and count != 2):
            instead = "kind=binary" if count == 2 else f"a rule with {minimum} or more classes"
            raise ArgumentError(f"rule={self.class_map.spelled()} gives {count} classes, but {self.kind} heads "
                                f"need {'exactly 2' if self.kind == 'binary' else f'{minimum} or more'}; use "
                                f"{instead}", "kind")
        object.__setattr__(self, "weight", check_number("weight", self.weight, low=0, low_open=True,
                                                        error=ArgumentError))
        object.__setattr__(self, "class_weights", self._checked_class_weights())

    def _checked_class_weights(self) -> str | tuple[float, ...] | None:
        weights = self.class_weights
        if weights is None:
            return None
        if self.kind != "multiclass":
            other = ("model.pos_weight weighs a binary target's positives" if self.kind == "binary"
                     else "an ordinal head is not class-weighted")
            raise ArgumentError(f"class_weights={weights!r} weighs the classes of a multiclass head; {other}: "
                                "set class_weights=null", "kind")
        if isinstance(weights, str):
            return str(look_up_option("class_weights", weights, ["auto"], error=ArgumentError))
        if not isinstance(weights, tuple | list) or len(weights) != self.num_classes:
            given = list(weights) if isinstance(weights, tuple) else weights
            raise ArgumentError(f"class_weights={given!r} must be null, auto, or {self.num_classes} positive "
                                f"numbers (one per class: {', '.join(self.class_names)})")
        return tuple(check_number("class_weights", value, low=0, low_open=True, error=ArgumentError)
                     for value in weights)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str = PRIMARY_NAME, multitask: bool = False) -> HeadSpec:
        """The head of ``config`` (``{kind, column, rule, class_weights}``, and ``weight`` in a multitask
        target); an auxiliary head (``name`` other than ``label``) reads the column ``name`` by default."""
        keys = HEAD_KEYS if multitask else SINGLE_KEYS
        for key in config:
            if key not in keys:
                hint = ("; weight weighs a head's loss in a multitask target (target=multitask)" if key == "weight"
                        else "; auxiliary heads are read with kind=multitask (target=multitask or lidc_attributes)"
                        if key in MULTITASK_KEYS else "")
                raise ArgumentError(f"{key}: no such option of a target head{did_you_mean(key, keys)}; a head has "
                                    f"{', '.join(keys)}{hint}")
        settings = {**HEAD_DEFAULTS, **config}
        if "column" not in settings and name != PRIMARY_NAME:
            settings["column"] = name
        if settings.get("kind") is None:
            raise ArgumentError(f"kind=null: give the head's kind, one of {', '.join(HEAD_KINDS)}")
        if settings.get("column") is None:
            raise ArgumentError("column=null: give the labels-CSV column the head learns")
        rule = settings["rule"]
        if settings["kind"] == MULTITASK:
            raise ArgumentError("kind=multitask is a target of several heads, not a head's kind; give this head "
                                f"one of {', '.join(HEAD_KINDS)}")
        class_weights = settings["class_weights"]
        return cls(name=name, kind=settings["kind"], column=settings["column"],
                   rule=None if rule is None else ClassMap.from_config(rule), weight=settings["weight"],
                   class_weights=tuple(class_weights) if isinstance(class_weights, list | tuple) else class_weights)

    @property
    def class_map(self) -> ClassMap:
        """The map its column is read with (a binary head without a rule: the column's 0/1)."""
        return BINARY_LABELS if self.rule is None else self.rule

    @property
    def num_classes(self) -> int:
        return self.class_map.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.class_map.class_names

    @property
    def is_primary(self) -> bool:
        return self.name == PRIMARY_NAME

    @property
    def label_column(self) -> str:
        """The sample table's column of its class indices: ``label`` (primary), ``<name>_label`` (auxiliary)."""
        return PRIMARY_NAME if self.is_primary else f"{self.name}_label"

    @property
    def probability_columns(self) -> tuple[str, ...]:
        """Its columns in a predictions table: ``probability`` (binary), ``probability_<class>`` per class
        (multiclass), ``probability_ge2`` … ``probability_geK``, P(level >= k) with levels 1 … K (ordinal);
        an auxiliary head's start with ``<name>_``."""
        prefix = "" if self.is_primary else f"{self.name}_"
        if self.kind == "binary":
            return (f"{prefix}probability",)
        if self.kind == "multiclass":
            return tuple(f"{prefix}probability_{class_name}" for class_name in self.class_names)
        return tuple(f"{prefix}probability_ge{level}" for level in range(2, self.num_classes + 1))

    @property
    def prediction_column(self) -> str:
        """Its predicted class index in a predictions table: ``prediction`` (primary), ``<name>_prediction``."""
        return "prediction" if self.is_primary else f"{self.name}_prediction"

    def metric_prefix(self, stage: str) -> str:
        """``test/`` for the primary head (today's metric names), ``test/<name>/`` for an auxiliary one."""
        return f"{stage}/" if self.is_primary else f"{stage}/{self.name}/"

    def to_config(self, multitask: bool = False) -> dict[str, Any]:
        """The head as the ``target`` config gives it (:meth:`from_config` reads it back)."""
        config = {"kind": self.kind, "column": self.column,
                  "rule": None if self.rule is None else self.rule.to_config(),
                  "class_weights": list(self.class_weights) if isinstance(self.class_weights, tuple)
                  else self.class_weights}
        return {**config, "weight": self.weight} if multitask else config

    def fingerprint(self) -> dict[str, Any]:
        """What the head makes of the data: its column and its map's content."""
        return {"column": self.column, "classes": self.class_map.as_config()}


# Each head option's default: HeadSpec's (tests/test_option_defaults.py holds conf/target to them); kind and column
# have none in a config (an auxiliary's column defaults to its name).
HEAD_DEFAULTS: Mapping[str, Any] = {item.name: item.default for item in fields(HeadSpec)
                                    if item.name in ("rule", "class_weights", "weight")}


@dataclass(frozen=True)
class TargetOptions:
    """The checked ``target`` options: the primary head and, for a multitask target, the auxiliary heads.

    The default is today's target: one binary head on the labels CSV's ``label`` (``conf/target/binary.yaml``).
    """

    primary: HeadSpec = field(default_factory=HeadSpec)
    auxiliary: tuple[HeadSpec, ...] = ()

    def __post_init__(self) -> None:
        if not self.primary.is_primary or any(head.is_primary for head in self.auxiliary):
            raise ArgumentError(f"auxiliary: the name {PRIMARY_NAME!r} is the primary head's; name each auxiliary "
                                "head otherwise (e.g. by its column)")
        names = [head.name for head in self.auxiliary]
        if len(set(names)) < len(names):
            raise ArgumentError(f"auxiliary: head names {names} repeat")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> TargetOptions:
        """The options of the ``target`` group (None: the default binary target)."""
        if config is None:
            return cls()
        kind = look_up_option("kind", config.get("kind"), TARGET_KINDS, error=ArgumentError)
        if kind != MULTITASK:
            return cls(HeadSpec.from_config(config))
        for key in config:
            if key not in MULTITASK_KEYS:
                raise ArgumentError(f"{key}: not an option of a multitask target{did_you_mean(key, MULTITASK_KEYS)}"
                                    f"; it has {', '.join(MULTITASK_KEYS)}, and each head its own "
                                    f"{', '.join(HEAD_KEYS)} (e.g. primary.{key})")
        primary = config.get("primary")
        if not isinstance(primary, Mapping):
            raise ArgumentError(f"primary={primary!r}: a multitask target needs a main head, e.g. "
                                "primary={kind: binary, column: label}")
        auxiliary = config.get("auxiliary") or {}
        if not isinstance(auxiliary, Mapping) or not auxiliary:
            raise ArgumentError(f"auxiliary={auxiliary!r}: a multitask target needs at least one head in auxiliary, "
                                "e.g. +target.auxiliary.texture={kind: multiclass, rule: texture3}; or use "
                                "target=binary|multiclass|ordinal for one head")
        with named_under("primary"):
            primary_head = HeadSpec.from_config(primary, multitask=True)
        heads = []
        for name, head in auxiliary.items():
            if not isinstance(name, str) or not NAME_PATTERN.match(name) or name == PRIMARY_NAME:
                raise ArgumentError(f"auxiliary.{name}: a head's name must be letters, digits and _ (it names its "
                                    f"metrics, test/<name>/...), and not {PRIMARY_NAME!r} (the main head's)")
            if not isinstance(head, Mapping):
                raise ArgumentError(f"auxiliary.{name}={head!r} must be a head: a mapping of {', '.join(HEAD_KEYS)}")
            with named_under(f"auxiliary.{name}"):
                heads.append(HeadSpec.from_config(head, name=name, multitask=True))
        return cls(primary_head, tuple(heads))

    @property
    def kind(self) -> str:
        """``multitask`` with auxiliary heads, else the primary head's kind."""
        return MULTITASK if self.auxiliary else self.primary.kind

    @property
    def heads(self) -> tuple[HeadSpec, ...]:
        """The primary head, then the auxiliary ones: the order of the network's outputs and of the losses."""
        return (self.primary, *self.auxiliary)

    @property
    def label_columns(self) -> tuple[str, ...]:
        """The sample table's class-index column of each head, in the heads' order (``label`` first)."""
        return tuple(head.label_column for head in self.heads)

    @property
    def probability_columns(self) -> tuple[str, ...]:
        """Every head's predictions-table columns, in the heads' order: as many as the network's outputs."""
        return tuple(column for head in self.heads for column in head.probability_columns)

    def describe(self) -> str:
        """``target=ordinal (malignancy by rating)``: the target as a message names it."""
        heads = ", ".join(f"{head.name}: {head.kind} {head.column}" for head in self.heads)
        return f"target={self.kind} ({heads})"

    @property
    def is_default(self) -> bool:
        """Today's target (a binary ``label`` as given): runs under it keep their fingerprints."""
        return self == TargetOptions()

    def config_key(self, head: HeadSpec, option: str) -> str:
        """How the command line names ``option`` of ``head``: ``target.rule``, ``target.primary.rule`` or
        ``target.auxiliary.<name>.rule``."""
        if not self.auxiliary:
            return f"target.{option}"
        return f"target.primary.{option}" if head.is_primary else f"target.auxiliary.{head.name}.{option}"

    def to_config(self) -> dict[str, Any]:
        """The ``target`` group of these options, as :meth:`from_config` reads it (plain values)."""
        if not self.auxiliary:
            return self.primary.to_config()
        return {"kind": MULTITASK, "primary": self.primary.to_config(multitask=True),
                "auxiliary": {head.name: head.to_config(multitask=True) for head in self.auxiliary}}

    def fingerprint(self) -> dict[str, Any] | None:
        """What the target makes of the labels CSV, for the data fingerprint
        (:func:`~lungexp.data.labels.label_rules.labelled_key`); None for the default target, whose runs keep the
        fingerprints they had before targets existed."""
        if self.is_default:
            return None
        return {"primary": self.primary.fingerprint(),
                "auxiliary": {head.name: head.fingerprint() for head in self.auxiliary}}


def label_targets(table: pd.DataFrame, target: TargetOptions, source: str | Path) -> pd.DataFrame:
    """``table`` (a labels CSV as read) with every head's class indices: the primary's in ``label`` (the rows
    its rule drops dropped, with their count logged), an auxiliary head's in ``<name>_label`` (:data:`MASKED`
    where its value is missing or outside its rule, counted in the log). The default target returns ``table``
    as it is.

    A missing column, or a primary value that is missing or outside its rule, is an :class:`AnnotationError`
    naming ``source``, the column and the lines."""
    if target.is_default:
        return table
    for head in target.heads:
        if head.column not in table.columns:
            key = target.config_key(head, "column")
            raise AnnotationError(f"{source}: no column '{head.column}' ({key}); the CSV has "
                                  f"{', '.join(map(str, table.columns))}")
    primary = target.primary
    assigned = primary.class_map.assign(table[primary.column])
    for bad, problem in ((assigned.missing, "is empty or not a number"),
                         (assigned.outside, f"has values outside the rule ({primary.class_map.describe()})")):
        if bad.any():
            raise AnnotationError(f"{source}: column '{primary.column}' {problem} in {int(bad.sum())} row(s) "
                                  f"(lines {csv_lines(table.index[bad])}); fix the CSV, or drop those values with "
                                  "the target's rule")
    kept = ~assigned.dropped
    if not kept.all():
        log.info("%s: target %s: %d of %d rows have a value of '%s' the rule %s drops (%s)", source, primary.kind,
                 int((~kept).sum()), len(table), primary.column, primary.class_map.spelled(),
                 ", ".join(f"{value:g}" for value in primary.class_map.drop))
    table = table[kept].assign(label=assigned.classes[kept])
    for head in target.auxiliary:
        assignment = head.class_map.assign(table[head.column])
        _log_masked(head, assignment, len(table), source)
        table = table.assign(**{head.label_column: assignment.classes})
    return table


def _log_masked(head: HeadSpec, assignment: ClassAssignment, rows: int, source: str | Path) -> None:
    masked = assignment.classes == MASKED
    if not masked.any():
        return
    reasons = {"missing": assignment.missing, "dropped by the rule": assignment.dropped,
               "outside the rule": assignment.outside}
    log.info("%s: auxiliary head %s: %d of %d rows masked (%s): they train and score the other heads only", source,
             head.name, int(masked.sum()), rows,
             ", ".join(f"{int(np.sum(flags))} {reason}" for reason, flags in reasons.items() if np.any(flags)))
