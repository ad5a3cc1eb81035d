"""The pipeline on the real LIDC-IDRI scans: DICOM -> LUNA16 layout -> patches -> a training run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungexp.config.check import check
from lungexp.convert import main as convert
from lungexp.data.labels.annotations import read_annotations
from lungexp.data.patches.extraction import PatchExtractor, PatchSpec
from lungexp.data.scans import index_scans, read_scan
from lungexp.training.pipeline import train
from tests.helpers.data import shared_data_dir

pytestmark = pytest.mark.real_data

PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0003")


@pytest.fixture(scope="module")
def luna16_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two shared DICOM scans converted to a LUNA16 folder: one scan per subset, as LUNA16 folds."""
    data = shared_data_dir()
    root = tmp_path_factory.mktemp("luna16_from_dicom")
    for subset, patient in enumerate(PATIENTS):
        assert convert([str(data / "lidc-idri" / patient), str(root), "--subset", str(subset)]) == 0
    return root


@pytest.fixture(scope="module")
def nodules(luna16_root: Path) -> pd.DataFrame:
    annotations = read_annotations(shared_data_dir() / "luna16" / "annotations.csv")
    return annotations[annotations["seriesuid"].isin(index_scans(luna16_root)["seriesuid"])]


def test_converted_folder_is_in_luna16_layout(luna16_root: Path, nodules: pd.DataFrame) -> None:
    scans = index_scans(luna16_root)
    assert sorted(scans["subset"]) == [0, 1]
    assert len(nodules) == 4  # 1 nodule in LIDC-IDRI-0001, 3 in LIDC-IDRI-0003


def test_patch_around_each_real_nodule_has_it_at_the_centre(luna16_root: Path, nodules: pd.DataFrame) -> None:
    paths = dict(zip(*index_scans(luna16_root)[["seriesuid", "path"]].to_numpy().T, strict=True))
    spec = PatchSpec(size=32, spacing_mm=(1.0,))
    for nodule in nodules.itertuples():
        patch = PatchExtractor(read_scan(paths[nodule.seriesuid]), spec).extract(
            [nodule.coordX, nodule.coordY, nodule.coordZ])[0]
        radius = max(int(nodule.diameter_mm / 2), 1)
        core = patch[16 - 1:16 + 2, 16 - 1:16 + 2, 16 - 1:16 + 2]
        assert core.mean() > -300, f"patch centre of {nodule.seriesuid} is not soft tissue ({core.mean():.0f} HU)"
        # the soft-tissue blob containing the centre is centred on it (within the nodule radius)
        from scipy import ndimage

        components, _ = ndimage.label(patch > -400)
        blob = np.argwhere(components == components[16, 16, 16])
        blob = blob[np.linalg.norm(blob - 16, axis=1) <= nodule.diameter_mm]  # ignore attached vessels/wall
        offset = np.linalg.norm(blob.mean(axis=0) - 16)
        assert offset <= radius, f"{nodule.seriesuid}: nodule blob centred {offset:.1f} mm off the patch centre"


@pytest.mark.slow
def test_training_run_on_the_converted_luna16_folder(make_config, luna16_root: Path, tmp_path: Path) -> None:
    """`data=luna16 data.root=DIR data.labels_csv=null` with only annotations.csv: negatives sampled from the
    real lungs."""
    annotations = shared_data_dir() / "luna16" / "annotations.csv"
    cfg = make_config("data=luna16", f"data.root={luna16_root}", "data.labels_csv=null",
                      f"data.annotations_csv={annotations}", f"data.cache_dir={tmp_path}/cache",
                      "data.split.fold=1", "data.split.val_fold=1", "data.negatives.count=12",
                      "trainer.max_epochs=1")
    result = train(check(cfg, "run"))
    assert {"test/auroc", "val/auroc"} <= set(result.metrics)
    sampled = list(Path(cfg.data.cache_dir).glob("sampled_candidates-*.csv"))
    assert len(sampled) == 1
    table = pd.read_csv(sampled[0])
    assert (table["class"] == 1).sum() == 4 and (table["class"] == 0).sum() == 24
