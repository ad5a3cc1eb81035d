"""The ``target`` group: every option composes and checks into :class:`TargetOptions` (the default is today's
binary target), a bad one is one :class:`ConfigError` naming its key before any slow work, class maps turn a
labels CSV into class indices (the primary's dropped rows dropped, an auxiliary's unlabelled rows masked and
counted), and the target is part of the data fingerprint without moving the fingerprints runs had before."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungexp.config.check import check, data_options, target_options
from lungexp.data.labels.annotations import AnnotationError
from lungexp.data.labels.class_maps import BINARY_LABELS, CLASS_MAPS, MASKED, ClassMap
from lungexp.data.labels.label_rules import LabelRule, labelled_key
from lungexp.data.labels.targets import HeadSpec, TargetOptions, label_targets
from lungexp.utils.errors import ArgumentError, ConfigError
from tests.helpers.config import CONFIG_DIR, compose_config

TARGETS = sorted(path.stem for path in (CONFIG_DIR / "target").glob("*.yaml"))
# texture3 of every LIDC texture rating, and the rows (lidc-crops' columns) the label_targets tests read.
LIDC_ROWS = pd.DataFrame({
    "seriesuid": [f"s{k}" for k in range(6)],
    "label": [0, 1, 0, 1, 1, 0],
    "malignancy": [1, 5, 2, 4, 3, 2],
    "texture": [1, 5, 3, None, 9, 2],      # row 3 missing, row 4 outside texture3
    "spiculation": [1, 5, 2, 1, 4, 1],
    "calcification": [6, 6, 3, 6, 6, 1],
})


def _target(tmp_path: Path, *overrides: str) -> TargetOptions:
    cfg = compose_config(["data=synthetic_malignancy", *overrides], tmp_path)
    return target_options(cfg, data_options(cfg))


def test_the_default_target_is_todays_binary_label(tmp_path: Path) -> None:
    target = _target(tmp_path)
    assert target == TargetOptions() and target.is_default and target.kind == "binary"
    assert target.primary.class_map == BINARY_LABELS and target.primary.probability_columns == ("probability",)
    assert target.fingerprint() is None  # runs keep the data fingerprints they had


@pytest.mark.parametrize("option", [name for name in TARGETS if name != "multitask"])
def test_every_target_option_composes_checks_and_round_trips(option: str, tmp_path: Path) -> None:
    target = _target(tmp_path, f"target={option}")
    assert TargetOptions.from_config(target.to_config()) == target
    assert target.kind == {"lidc_attributes": "multitask"}.get(option, option)


def test_the_presets_are_what_the_issue_asks(tmp_path: Path) -> None:
    multiclass = _target(tmp_path, "target=multiclass").primary
    assert (multiclass.column, multiclass.class_names) == ("texture", ("ground_glass", "part_solid", "solid"))
    assert multiclass.probability_columns == tuple(f"probability_{name}" for name in multiclass.class_names)
    ordinal = _target(tmp_path, "target=ordinal").primary
    assert (ordinal.column, ordinal.num_classes) == ("malignancy", 5)
    assert ordinal.probability_columns == ("probability_ge2", "probability_ge3", "probability_ge4", "probability_ge5")
    lidc = _target(tmp_path, "target=lidc_attributes")
    assert [(head.name, head.kind, head.column, head.rule) for head in lidc.heads] == [
        ("label", "binary", "label", None), ("texture", "multiclass", "texture", CLASS_MAPS["texture3"]),
        ("spiculation", "ordinal", "spiculation", CLASS_MAPS["rating"]),
        ("calcification", "binary", "calcification", CLASS_MAPS["calcified"])]
    assert [head.metric_prefix("test") for head in lidc.heads] == ["test/", "test/texture/", "test/spiculation/",
                                                                  "test/calcification/"]
    assert lidc.auxiliary[0].label_column == "texture_label"


def test_overrides_reach_the_options(tmp_path: Path) -> None:
    target = _target(tmp_path, "target=multiclass", "target.class_weights=auto",
                     "target.rule={classes:{low:[1,2],mid:[3],high:[4,5]},drop:[]}", "target.column=malignancy")
    assert target.primary.class_weights == "auto" and target.primary.class_names == ("low", "mid", "high")
    assert target.primary.rule is not None and target.primary.rule.name is None  # inline
    weighted = _target(tmp_path, "target=lidc_attributes", "target.auxiliary.texture.weight=0.25",
                       "+target.auxiliary.malignancy={kind:ordinal,rule:rating}")
    assert weighted.auxiliary[0].weight == 0.25 and weighted.auxiliary[-1].column == "malignancy"


def test_run_options_carry_the_target(tmp_path: Path) -> None:
    assert check(compose_config(["target=ordinal", "data=synthetic_malignancy"], tmp_path), "run").target.kind == \
        "ordinal"


@pytest.mark.parametrize(("overrides", "message"), [
    (["target=multitask"], r"^target\.auxiliary=\{\}: a multitask target needs at least one head in target\.auxiliary"),
    (["target=lidc_attributes", "target.primary=null"],
     r"^target\.primary=None: a multitask target needs a main head, e\.g\. target\.primary=\{kind"),
    (["target=multiclass", "target.rule=texture4"],
     r"^target\.rule='texture4' is no class map \(did you mean 'texture3'\?\); the named maps are texture3, "
     r"calcified, rating"),
    (["target=ordinal", "target.rule=calcified"],
     r"^target\.rule=calcified gives 2 classes, but ordinal heads need 3 or more; use target\.kind=binary"),
    (["target=multiclass", "target.rule=null"], r"^target\.rule=null: a multiclass head needs a class map"),
    (["target=lidc_attributes", "target.auxiliary.texture.weight=0"],
     r"^target\.auxiliary\.texture\.weight=0 must be a number > 0"),
    (["target=binary", "target.kind=ordinl"], r"^target\.kind='ordinl' is not a valid choice \(did you mean 'ordinal'"),
    (["target=binary", "+target.class_weights=auto"],
     r"^target\.class_weights='auto' weighs the classes of a multiclass head; model\.pos_weight"),
    (["target=multiclass", "target.class_weights=[1,2]"], r"^target\.class_weights=\[1, 2\] must be null, auto, or 3"),
    (["target=binary", "+target.weight=2"], r"^target\.weight: no such option of a target head.*multitask"),
    (["target=binary", "+target.auxiliary={}"], r"^target\.auxiliary: no such option.*target=multitask"),
    (["target=lidc_attributes", "target.auxiliary.texture=3"],
     r"^target\.auxiliary\.texture=3 must be a head: a mapping of kind, column, rule, class_weights, weight"),
    (["target=lidc_attributes", "+target.auxiliary.label={kind:binary}"],
     r"^target\.auxiliary\.label: .* and not 'label'"),
    (["target=multiclass", "target.rule={classes:{a:[1],b:[1,2]}}"],
     r"^target\.rule: value 1 is in both 'a' and 'b'"),
    (["target=multiclass", "data=synthetic", "data.labels_csv=null"],
     r"^target\.kind=multiclass reads the column\(s\) 'texture' of the labels CSV, but data\.labels_csv=null"),
    (["target=multiclass", "+data/label_rule=nodulemnist3d"],
     r"^data\.label_rule=.* but the primary target reads 'texture' \(target\.column\).*data\.label_rule=null"),
])
def test_a_bad_target_is_one_error_naming_its_key(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        _target(tmp_path, *overrides)


def test_the_target_is_checked_before_the_slow_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lungexp.config.check as checking

    def slow(*args, **kwargs):
        raise AssertionError("the schema's checks (they import torch and Lightning) ran before the target's")

    monkeypatch.setattr(checking, "check_config", slow)
    with pytest.raises(ConfigError, match=r"^target\.rule"):
        check(compose_config(["target=multiclass", "target.rule=nope", "data=synthetic_malignancy"], tmp_path), "run")


def test_a_head_built_in_code_is_checked_too() -> None:
    with pytest.raises(ArgumentError, match=r"^rule=texture3 gives 3 classes, but binary heads need exactly 2"):
        HeadSpec(kind="binary", rule=CLASS_MAPS["texture3"])
    with pytest.raises(ArgumentError, match=r"^kind='nominal'"):
        HeadSpec(kind="nominal")


def test_the_primary_drops_what_its_rule_drops_and_refuses_what_it_does_not_know(caplog) -> None:
    rated = LIDC_ROWS.drop(index=[3, 4])
    rule = HeadSpec(kind="multiclass", column="malignancy",
                    rule=ClassMap.from_config({"classes": {"low": [1, 2], "mid": [3], "high": [4, 5]}, "drop": []}))
    assert label_targets(rated, TargetOptions(rule), "points.csv")["label"].tolist() == [0, 2, 0, 0]
    dropping = TargetOptions(HeadSpec(kind="multiclass", column="malignancy", rule=ClassMap.from_config(
        {"classes": {"one": [1], "two": [2], "five": [5]}, "drop": [3, 4]})))
    with caplog.at_level(logging.INFO, logger="lungexp.data.labels.targets"):
        kept = label_targets(LIDC_ROWS, dropping, "points.csv")
    assert kept["seriesuid"].tolist() == ["s0", "s1", "s2", "s5"] and kept["label"].tolist() == [0, 2, 1, 1]
    assert "2 of 6 rows have a value of 'malignancy' the rule" in caplog.text
    texture = TargetOptions(HeadSpec(kind="multiclass", column="texture", rule=CLASS_MAPS["texture3"]))
    with pytest.raises(AnnotationError, match=r"^points\.csv: column 'texture' is empty or not a number in 1 row\(s\) "
                                              r"\(lines 5\)"):
        label_targets(LIDC_ROWS, texture, "points.csv")
    with pytest.raises(AnnotationError, match=r"column 'texture' has values outside the rule .* \(lines 6\)"):
        label_targets(LIDC_ROWS.drop(index=3), texture, "points.csv")
    with pytest.raises(AnnotationError, match=r"no column 'lobulation' \(target\.column\)"):
        label_targets(LIDC_ROWS, TargetOptions(HeadSpec(kind="ordinal", column="lobulation",
                                                        rule=CLASS_MAPS["rating"])), "points.csv")


def test_an_auxiliary_masks_its_unlabelled_rows_only_and_counts_them(tmp_path: Path, caplog) -> None:
    target = _target(tmp_path, "target=lidc_attributes")
    with caplog.at_level(logging.INFO, logger="lungexp.data.labels.targets"):
        table = label_targets(LIDC_ROWS, target, "points.csv")
    assert len(table) == len(LIDC_ROWS) and table["label"].tolist() == LIDC_ROWS["label"].tolist()
    assert table["texture_label"].tolist() == [0, 2, 1, MASKED, MASKED, 0]
    assert table["spiculation_label"].tolist() == [0, 4, 1, 0, 3, 0]
    assert table["calcification_label"].tolist() == [0, 0, 1, 0, 0, 1]
    assert "auxiliary head texture: 2 of 6 rows masked (1 missing, 1 outside the rule)" in caplog.text
    assert "spiculation" not in caplog.text  # nothing masked, nothing said


def test_the_default_target_leaves_the_labels_as_read() -> None:
    assert label_targets(LIDC_ROWS, TargetOptions(), "points.csv") is LIDC_ROWS


def test_the_target_is_part_of_the_data_fingerprint_and_old_fingerprints_stay(tmp_path: Path) -> None:
    rule = LabelRule.from_config({"column": "malignancy", "positive": ">=4", "negative": "<=2"})
    key = "0123456789abcdef"
    assert labelled_key(key, None, TargetOptions().fingerprint()) == key
    assert labelled_key(key, rule, TargetOptions().fingerprint()) == "d3cbeec6a9117ea4"  # as before targets existed
    keys = {labelled_key(key, None, _target(tmp_path, *overrides).fingerprint()) for overrides in (
        ["target=multiclass"], ["target=ordinal"], ["target=lidc_attributes"],
        ["target=multiclass", "target.rule={classes:{gg:[1,2],ps:[3],solid:[4,5]}}"])}
    assert len(keys) == 4 and key not in keys
    # The content of a map counts, not its name: the same classes inline are the same data.
    inline = _target(tmp_path, "target=multiclass", f"target.rule={_inline(CLASS_MAPS['texture3'])}")
    assert inline.fingerprint() == _target(tmp_path, "target=multiclass").fingerprint()
    # What the heads learn with (kind, class weights, loss weights) is no part of the data.
    assert _target(tmp_path, "target=multiclass", "target.class_weights=auto").fingerprint() == \
        _target(tmp_path, "target=multiclass").fingerprint()


def _inline(class_map: ClassMap) -> str:
    config = class_map.as_config()
    classes = ",".join(f"{name}:[{','.join(map(str, values))}]" for name, values in config["classes"].items())
    return f"{{classes:{{{classes}}},drop:[]}}"


@pytest.mark.parametrize(("name", "values", "classes"), [
    ("texture3", [1, 2, 3, 4, 5], [0, 0, 1, 1, 2]),
    ("calcified", [1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 0]),
    ("rating", [1, 2, 3, 4, 5], [0, 1, 2, 3, 4]),
])
def test_the_named_maps(name: str, values: list[int], classes: list[int]) -> None:
    assignment = CLASS_MAPS[name].assign(pd.Series(values))
    assert assignment.classes.tolist() == classes and not assignment.dropped.any()
    outside = CLASS_MAPS[name].assign(pd.Series([0, 7.5, "x", None]))
    assert (outside.classes == MASKED).all()
    assert outside.outside.tolist() == [True, True, False, False]
    assert outside.missing.tolist() == [False, False, True, True]


def test_an_inline_map_states_its_classes_and_drops() -> None:
    three = ClassMap.from_config({"classes": {"benign": [1, 2], "indeterminate": 3, "malignant": [4, 5]}})
    assert three.class_names == ("benign", "indeterminate", "malignant") and three.drop == ()
    dropping = ClassMap.from_config({"classes": {"benign": [1, 2], "malignant": [4.0, 5]}, "drop": [3]})
    assignment = dropping.assign(pd.Series([1, 3, 4, 6]))
    assert assignment.classes.tolist() == [0, MASKED, 1, MASKED]
    assert assignment.dropped.tolist() == [False, True, False, False]
    assert assignment.outside.tolist() == [False, False, False, True]
    assert dropping.as_config() == {"classes": {"benign": [1, 2], "malignant": [4, 5]}, "drop": [3]}
    assert dropping.describe() == "benign = 1, 2; malignant = 4, 5; dropped: 3"


@pytest.mark.parametrize(("rule", "message"), [
    ({"classes": {"a": [1]}}, r"1 class\(es\); a class map needs at least 2"),
    ({"classes": {"a": [1], "b": []}}, r"class 'b' has no values"),
    ({"classes": {"a": [1], "b": ["two"]}}, r"^rule\.classes\.b=\['two'\] must be a list of numbers"),
    ({"classes": {"a b": [1], "c": [2]}}, r"class name 'a b' must be letters, digits and _"),
    ({"classes": {"a": [1], "b": [2]}, "drop": [2]}, r"value 2 is in both 'b' and 'drop'"),
    ({"classes": {"a": [1], "b": [2]}, "keep": [3]}, r"^rule=.* must name a class map"),
    (["texture3"], r"^rule=\['texture3'\] must name a class map"),
])
def test_a_malformed_map_is_an_error_naming_rule(rule, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        ClassMap.from_config(rule)


def test_every_named_map_has_names_fit_for_columns() -> None:
    for name, class_map in CLASS_MAPS.items():
        assert class_map.name == name and ClassMap.from_config(name) is class_map
        assert np.unique(np.concatenate([values for _, values in class_map.classes])).size == sum(
            len(values) for _, values in class_map.classes)
