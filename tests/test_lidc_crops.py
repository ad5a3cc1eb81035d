"""``experiment=lidc_crops`` on the 794 real LIDC-IDRI nodule crops of ``../shared/data/lidc-crops``, under both
label rules: the counts its data README gives, the one centre outside its crop skipped, five patient folds."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytest

from lungexp.config.check import data_options
from lungexp.training.cross_validation import plan_folds
from tests.helpers.config import compose_config
from tests.helpers.data import shared_data_dir

pytestmark = [pytest.mark.real_data, pytest.mark.slow]  # reads 794 scan headers per rule

# (overrides, crops, malignant, patients): 794 crops of 441 patients, 274 malignant, less the one outside its box
# (rated 5); NoduleMNIST3D's rule drops the 284 crops rated 3 and calls 4-5 malignant (95 + 109).
RULES = {
    "label": ([], 793, 273, 441),
    "nodulemnist3d": (["+data/label_rule=nodulemnist3d"], 509, 203, 338),
}


@pytest.mark.parametrize("rule", RULES)
def test_the_preset_reads_the_crops(rule: str, tmp_path: Path, caplog) -> None:
    crops = shared_data_dir() / "lidc-crops"
    if not crops.is_dir():
        pytest.skip(f"{crops} not found")
    overrides, count, malignant, patients = RULES[rule]
    cfg = compose_config(["experiment=lidc_crops", f"data.root={crops}", f"data.cache_dir={tmp_path}", *overrides],
                         tmp_path)
    with caplog.at_level(logging.INFO):
        samples, _ = hydra.utils.instantiate(cfg.data, _convert_="partial").sample_table()
    assert "skipping 1 point(s) outside their scan" in caplog.text
    assert (len(samples), int(samples["label"].sum()), samples["patient_id"].nunique()) == (count, malignant, patients)
    if rule == "nodulemnist3d":
        assert "284 of 794 rows match neither" in caplog.text
        assert set(samples["malignancy"]) == {1, 2, 4, 5}
    folds = plan_folds(data_options(cfg).split, cfg.cv.folds, samples)  # each checked: disjoint patients, both classes
    assert len(folds) == 5
