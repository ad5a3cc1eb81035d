"""Candidates without a candidates file (sampled negatives), excluded findings, and the preprocess CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungexp.data.labels import sampled_candidates as candidates_module
from lungexp.data.labels.annotations import read_annotations
from lungexp.data.labels.sampled_candidates import NegativesSpec, drop_excluded, sampled_candidates
from lungexp.data.names import COORD_COLUMNS
from lungexp.data.scans import index_scans
from tests.helpers.config import FAST_OVERRIDES, PROJECT_ROOT

SIX_NEGATIVES = NegativesSpec(count=6, margin_mm=5.0)


def test_sampled_candidates_are_nodules_plus_lung_negatives(synthetic_root: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    scans = index_scans(synthetic_root).iloc[:3]
    annotations = read_annotations(synthetic_root / "annotations.csv")
    annotations = annotations[annotations["seriesuid"].isin(scans["seriesuid"])]
    table = sampled_candidates(synthetic_root / "annotations.csv", scans, tmp_path, SIX_NEGATIVES)
    assert (table["class"] == 1).sum() == len(annotations)
    assert (table["class"] == 0).sum() == 6 * len(scans)
    for nodule in annotations.itertuples():
        negatives = table[(table["seriesuid"] == nodule.seriesuid) & (table["class"] == 0)][COORD_COLUMNS]
        distance = np.linalg.norm(negatives.to_numpy() - [nodule.coordX, nodule.coordY, nodule.coordZ], axis=1)
        assert distance.min() > nodule.diameter_mm / 2 + 5.0
    # cached: a second call reads the CSV instead of sampling again
    monkeypatch.setattr(candidates_module, "_negatives_for_scan", lambda task: pytest.fail("sampled again"))
    again = sampled_candidates(synthetic_root / "annotations.csv", scans, tmp_path, SIX_NEGATIVES)
    pd.testing.assert_frame_equal(again, table, check_dtype=False)
    assert len(list(tmp_path.glob("sampled_candidates-*.csv"))) == 1


def test_negatives_on_excluded_findings_are_dropped() -> None:
    table = pd.DataFrame({"seriesuid": ["a", "a", "a", "b"], "coordX": [0.0, 1.0, 30.0, 0.0],
                          "coordY": 0.0, "coordZ": 0.0, "label": [0, 1, 0, 0]})
    excluded = pd.DataFrame({"seriesuid": ["a"], "coordX": [0.0], "coordY": [0.0], "coordZ": [0.0],
                             "diameter_mm": [-1.0]})  # size unknown: a 2.5 mm radius is used
    kept = drop_excluded(table, excluded, "candidates.csv")
    assert kept.index.tolist() == [1, 2, 3]  # the negative on the finding is gone; the positive stays


def test_luna16_without_candidates_file_samples_negatives(make_config, synthetic_root: Path, tmp_path: Path) -> None:
    import hydra

    cfg = make_config("data=luna16", f"data.root={synthetic_root}", "data.labels_csv=null",
                      f"data.cache_dir={tmp_path}/cache", "data.negatives.count=5", "data.split.fold=0",
                      "data.split.val_fold=1")
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="partial")
    labels = datamodule.build_cache().index["label"]
    assert labels.sum() == len(read_annotations(synthetic_root / "annotations.csv"))
    assert (labels == 0).sum() == 5 * len(index_scans(synthetic_root))


@pytest.mark.slow
def test_preprocess_cli_builds_the_cache(synthetic_root: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lungexp.preprocess", f"data.root={synthetic_root}", "data.synthetic=null",
               f"data.cache_dir={tmp_path}/cache", *FAST_OVERRIDES]
    proc = subprocess.run(command, cwd=PROJECT_ROOT, env={**os.environ, "LUNGEXP_ROOT": str(tmp_path)},
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Patch cache:" in proc.stdout and "(1, 16, 16, 16)" in proc.stdout
    caches = [p for p in (tmp_path / "cache").iterdir() if (p / "meta.json").is_file()]
    assert len(caches) == 1 and not list((tmp_path / "cache").glob("*.partial"))
