"""``data.label_rule``: labels from a rating column, the rows it labels neither way dropped and counted, the rule
part of the data fingerprint; a malformed rule is one error naming ``data.label_rule``."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from lungexp.config.check import data_options
from lungexp.data.labels.annotations import AnnotationError
from lungexp.data.labels.label_rules import LabelRule
from lungexp.data.labels.sample_table import read_labels
from lungexp.utils.errors import ArgumentError, ConfigError
from tests.helpers.config import CONFIG_DIR

NODULEMNIST3D = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / "label_rule" / "nodulemnist3d.yaml"))


@pytest.fixture
def rated_points(tmp_path: Path) -> Path:
    """Five points rated 1-5, with labels that disagree with the NoduleMNIST3D rule (rating 3 labelled 1)."""
    path = tmp_path / "points.csv"
    pd.DataFrame({
        "seriesuid": [f"s{k}" for k in range(5)], "coordX": 0.0, "coordY": 0.0, "coordZ": range(5),
        "label": [0, 0, 1, 1, 1], "malignancy": [1, 2, 3, 4, 5],
    }).to_csv(path, index=False)
    return path


def test_the_rule_labels_by_rating_and_drops_and_counts_the_middle(rated_points: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="lungexp.data.labels.label_rules"):
        table = read_labels("points", rated_points, LabelRule.from_config(NODULEMNIST3D))
    assert table["malignancy"].tolist() == [1, 2, 4, 5]
    assert table["label"].tolist() == [0, 0, 1, 1]
    assert "1 of 5 rows match neither >=4 (positive) nor <=2 (negative) and are dropped" in caplog.text
    assert read_labels("points", rated_points)["label"].tolist() == [0, 0, 1, 1, 1]  # no rule: the CSV's labels


def test_the_named_rule_is_nodulemnist3d() -> None:
    assert LabelRule.from_config(NODULEMNIST3D).as_config() == {"column": "malignancy", "positive": ">=4",
                                                               "negative": "<=2"}


@pytest.mark.parametrize("rule", [
    "malignancy>=4",
    {"column": "malignancy", "positive": ">=4"},
    {"column": "malignancy", "positive": ">=4", "negative": "<=2", "extra": 1},
    {"column": "malignancy", "positive": "at least 4", "negative": "<=2"},
    {"column": "malignancy", "positive": ">=4", "negative": True},
    {"column": "", "positive": ">=4", "negative": "<=2"},
])
def test_a_malformed_rule_is_an_error_naming_the_key(make_config, rule) -> None:
    with pytest.raises(ArgumentError, match=r"^label_rule"):  # the library's parameter
        LabelRule.from_config(rule)
    cfg = make_config()
    with open_dict(cfg):
        cfg.data.label_rule = rule
    with pytest.raises(ConfigError, match=r"^data\.label_rule"):  # the key the user typed
        data_options(cfg)


@pytest.mark.parametrize(("rule", "message"), [
    ({"column": "rating", "positive": ">=4", "negative": "<=2"}, "no column 'rating'"),
    ({"column": "malignancy", "positive": ">=3", "negative": "<=3"}, r"matches both .* in 1 row\(s\) \(lines 4\)"),
])
def test_a_rule_that_does_not_fit_the_csv_names_it(rated_points: Path, rule: dict, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        read_labels("points", rated_points, LabelRule.from_config(rule))


def test_the_rule_is_part_of_the_data_fingerprint(make_config, nifti_root: Path, tmp_path: Path) -> None:
    points = pd.read_csv(nifti_root / "points.csv")
    points["malignancy"] = [1 + k % 5 for k in range(len(points))]
    points.to_csv(tmp_path / "rated.csv", index=False)
    base = [f"data.root={nifti_root}", "data.task=points", f"data.labels_csv={tmp_path}/rated.csv"]

    def fingerprint(*overrides: str) -> tuple[str, pd.DataFrame]:
        datamodule = hydra.utils.instantiate(make_config(*base, *overrides).data)
        datamodule.setup_all()
        return datamodule.fingerprint, datamodule.cache.index

    as_given, all_rows = fingerprint()
    nodulemnist, kept = fingerprint("+data/label_rule=nodulemnist3d")
    # Every row kept, labels changed: the same cached patches, yet another fingerprint.
    relabelled, every = fingerprint("data.label_rule={column:malignancy,positive:'>=3',negative:'<=2'}")
    assert len(kept) == (points["malignancy"] != 3).sum() < len(all_rows)
    assert set(kept["label"]) == {0, 1} and (kept["label"] == (kept["malignancy"] >= 4)).all()
    assert len(every) == len(all_rows)
    assert len({as_given, nodulemnist, relabelled}) == 3
