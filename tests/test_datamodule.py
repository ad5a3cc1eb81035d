"""The datamodule from real configs: normalisation, augmentation only in training, balanced sampling,
and every option checked (naming its key) before any data work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.errors import InstantiationException

from lungexp.config.check import data_options
from lungexp.data.patches.normalization import HUWindow
from lungexp.utils.errors import ArgumentError, ConfigError
from tests.helpers.config import compose_config, tiny_synthetic_overrides


def instantiate_data(cfg):
    """The datamodule of ``cfg``; the error it raises itself, not Hydra's InstantiationException around it."""
    try:
        return hydra.utils.instantiate(cfg.data, _convert_="partial")
    except InstantiationException as error:
        raise error.__cause__ from None


@pytest.fixture
def datamodule(make_config):
    def make(*overrides: str):
        module = hydra.utils.instantiate(make_config(*overrides).data, _convert_="partial")
        module.prepare_data()
        module.setup("fit")
        return module

    return make


def test_hu_window_normalisations() -> None:
    hu = np.array([[-2000.0, -1000.0, -300.0, 400.0, 3000.0]])
    torch.testing.assert_close(HUWindow(-1000, 400)(hu), torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]))
    torch.testing.assert_close(HUWindow(-1000, 400, "symmetric")(hu), torch.tensor([[-1.0, -1.0, 0.0, 1.0, 1.0]]))
    z = HUWindow(-1000, 400, "zscore")(hu)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std(unbiased=False)) - 1) < 1e-3
    with pytest.raises(ArgumentError, match="^normalize='minmax' is not a valid choice"):
        HUWindow(normalize="minmax")


def test_augmentation_applies_to_training_patches_only(datamodule) -> None:
    module = datamodule("aug=strong")
    train, test = module.datasets["train"], module.datasets["test"]
    assert train.transform is not None and test.transform is None
    torch.manual_seed(0)
    first, second = train[0]["image"], train[0]["image"]
    assert first.shape == second.shape == (1, 16, 16, 16)
    assert not torch.equal(first, second), "two draws of an augmented patch should differ"
    assert torch.equal(test[0]["image"], test[0]["image"])
    plain = datamodule("aug=none").datasets["train"][0]["image"]
    assert plain.min() >= 0 and plain.max() <= 1


@pytest.mark.parametrize("fraction", [0.5, 0.2])
def test_balanced_sampler_draws_the_configured_positive_fraction(datamodule, fraction: float) -> None:
    module = datamodule("data.balance.sampler=balanced", f"data.balance.positive_fraction={fraction}",
                        "data.balance.samples_per_epoch=4000")
    labels = module.datasets["train"].labels
    assert labels.mean() < 0.35  # the data itself is imbalanced
    drawn = labels[list(module.train_dataloader().sampler)]
    assert len(drawn) == 4000
    assert drawn.mean() == pytest.approx(fraction, abs=0.03)


def test_without_sampler_every_patch_is_seen_once_per_epoch(datamodule) -> None:
    module = datamodule("data.balance.sampler=none")
    seen = torch.cat([batch["index"] for batch in module.train_dataloader()])
    assert sorted(seen.tolist()) == sorted(module.datasets["train"].rows.tolist())


def test_multiscale_patches_become_channels(datamodule, make_config) -> None:
    module = datamodule("data.patch.spacing_mm=[1.0,2.0]")
    assert module.datasets["train"][0]["image"].shape == (2, 16, 16, 16)
    assert make_config("data.patch.spacing_mm=[1.0,2.0]").model.net.in_channels == 2


def test_every_split_holds_whole_series(datamodule) -> None:
    module = datamodule()
    series = {name: set(module.cache.index.iloc[d.rows]["seriesuid"]) for name, d in module.datasets.items()}
    assert not series["train"] & series["val"] and not series["train"] & series["test"]
    assert not series["val"] & series["test"]


def test_max_negatives_per_scan_caps_training_only_and_keeps_every_positive(datamodule) -> None:
    full = datamodule().cache.index
    module = datamodule("data.max_negatives_per_scan=2")  # finds the cache of every sample: caps in memory
    train_series = set(module.split_series("train"))
    train = module.cache.index.iloc[module.datasets["train"].rows]
    assert train["label"].sum() == full.loc[full["seriesuid"].isin(train_series), "label"].sum()
    negatives = train[train["label"] == 0].groupby("seriesuid").size()
    assert negatives.max() == 2 and set(negatives.index) == train_series
    for split in ("val", "test"):  # every candidate of their scans, as the FROC/CPM needs
        series = module.split_series(split)
        assert series and not set(series) & train_series
        assert full["seriesuid"].isin(series).sum() == len(module.datasets[split])
    again = datamodule("data.max_negatives_per_scan=2")
    assert (again.datasets["train"].rows == module.datasets["train"].rows).all()  # seeded


def test_max_negatives_per_scan_keeps_random_series_splits(datamodule) -> None:
    split = ("data.split.method=series", "data.split.val_fraction=0.2", "data.split.test_fraction=0.2")
    full, limited = datamodule(*split), datamodule(*split, "data.max_negatives_per_scan=1")
    for name in ("train", "val", "test"):
        assert full.split_series(name) == limited.split_series(name)
    assert len(limited.datasets["test"]) == len(full.datasets["test"])


# --------------------------------------------------------------------------------------------------
# Options are checked when the datamodule is made, before any data is generated, read or cached


@pytest.mark.parametrize(("override", "suggestion"), [("data.split.method=subset", "subsets"),
                                                      ("data.balance.sampler=balance", "balanced")])
# The entry point's check names the config key; the datamodule, like any library call, its own parameter.
@pytest.mark.parametrize(("check", "prefix", "error"), [(data_options, "data.", ConfigError),
                                                        (instantiate_data, "", ArgumentError)],
                         ids=["entry_point", "constructor"])
def test_bad_choice_fails_before_generation_or_caching(tmp_path: Path, override: str, suggestion: str,
                                                       check, prefix: str, error: type) -> None:
    root, cache_dir = tmp_path / "synthetic_luna16", tmp_path / "cache"
    cfg = compose_config([f"data.root={root}", f"data.cache_dir={cache_dir}", *tiny_synthetic_overrides(),
                          override], tmp_path)
    key = prefix + override.split("=")[0].removeprefix("data.")
    with pytest.raises(error, match=rf"^{key}=.*did you mean '{suggestion}'"):
        check(cfg)
    assert not root.exists() and not cache_dir.exists()


def test_data_options_are_checked_without_importing_torch() -> None:
    """``python -m lungexp.run`` checks data.* before importing torch and Lightning, which take seconds."""
    code = "import sys, lungexp.data.options; print(sorted({'torch', 'pytorch_lightning'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.split.val_fraction=0"], r"data\.split\.val_fraction=0 must be a number in \(0, 1\)"),
        (["data.split.val_fraction=0.6", "data.split.test_fraction=0.5"], "must be less than 1"),
        (["data.split.fold=first"], r"data\.split\.fold='first' must be a whole number >= 0"),
        (["data.split.val_fold=1.5"], r"data\.split\.val_fold=1\.5 must be a whole number"),
        (["data.balance.positive_fraction=1"], r"data\.balance\.positive_fraction=1 must be a number in \(0, 1\)"),
        (["data.balance.samples_per_epoch=0"], r"data\.balance\.samples_per_epoch=0 must be a whole number >= 1"),
        (["data.batch_size=0"], r"data\.batch_size=0 must be a whole number >= 1"),
        (["data.num_workers=-1"], r"data\.num_workers=-1 must be a whole number >= 0"),
        (["data.preprocess_workers=two"], r"data\.preprocess_workers='two'"),
        (["data.pin_memory=maybe"], r"data\.pin_memory='maybe' must be true or false"),
        (["data.hu_window=[400,-1000]"], r"data\.hu_window=\[400, -1000\] must be \[low, high\] with low < high"),
        (["data.hu_window=[-1000]"], r"data\.hu_window=\[-1000\] must be \[low, high\]"),
        (["data.normalize=zscor"], "data.normalize='zscor' is not a valid choice .did you mean 'zscore'"),
        (["data.task=candidate"], "data.task='candidate' is not a valid choice .did you mean 'candidates'"),
        (["data.missing_scans=skp"], "data.missing_scans='skp' is not a valid choice .did you mean 'skip'"),
        (["data.outside=eror"], "data.outside='eror' is not a valid choice .did you mean 'error'"),
        (["data.patch.size=2"], r"data\.patch\.size=2 must be a whole number >= 4"),
        (["data.patch.size_mm=-8"], r"data\.patch\.size_mm=-8 must be a number > 0"),
        (["data.patch.size_mm=2"], r"data\.patch\.size_mm=2 is 2 voxel\(s\) at 1 mm"),
        (["data.patch.spacing_mm=[0]"], r"data\.patch\.spacing_mm=0 must be a number > 0"),
        (["data.max_negatives_per_scan=-1"], r"data\.max_negatives_per_scan=-1 must be a whole number >= 0 or null"),
        (["data.negatives.count=-1"], r"data\.negatives\.count=-1 must be a whole number >= 0"),
        (["data.negatives.vessel_fraction=1.5"], r"data\.negatives\.vessel_fraction=1\.5 must be a number in \[0, 1\]"),
        (["data.negatives.margin_mm=-1"], r"data\.negatives\.margin_mm=-1 must be a number >= 0"),
        (["data.in_channels=2"], r"data\.in_channels=2 but the patch has 1 channel"),
        (["data.root=/no/such/folder"], r"data\.root=/no/such/folder does not exist"),
        (["data=synthetic_malignancy", "data.labels_csv=null"], r"data\.labels_csv=null .* needs data\.task=candidates"),
        (["data.labels_csv=null", "data.annotations_csv=null"], r"needs data\.task=candidates and data\.annotations_csv"),
    ],
)
def test_every_option_is_checked_naming_its_key(make_config, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        data_options(make_config(*overrides))


@pytest.mark.parametrize(("override", "message"), [
    ("data.synthetic.num_scans=0", r"data\.synthetic\.num_scans=0 must be >= 1"),
    ("data.synthetic.shape_zyx=[8,8,8]", r"data\.synthetic\.shape_zyx=\[8, 8, 8\] must be 3 sizes"),
])
def test_synthetic_settings_are_checked_before_generating(tmp_path: Path, override: str, message: str) -> None:
    root = tmp_path / "synthetic_luna16"
    cfg = compose_config([f"data.root={root}", *tiny_synthetic_overrides(), override], tmp_path)
    with pytest.raises(ConfigError, match=message):
        data_options(cfg)
    assert not root.exists()


def test_setup_needs_nothing_prepare_data_kept(make_config) -> None:
    """Lightning runs prepare_data in one process only: setup in another must not depend on anything it set."""
    cfg = make_config()
    hydra.utils.instantiate(cfg.data, _convert_="partial").prepare_data()
    module = hydra.utils.instantiate(cfg.data, _convert_="partial")  # another process's: nothing prepared in it
    module.setup("fit")
    assert module.cache is not None and set(module.datasets) == {"train", "val", "test"}


def test_points_outside_their_scan_are_said_once_per_run(make_config, synthetic_root: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Lightning prepares the data for fit and again for test: the points data.outside=skip drops are logged once
    (they were three times)."""
    labels = pd.read_csv(synthetic_root / "candidates_V2.csv")
    labels_csv = tmp_path / "candidates.csv"
    pd.concat([labels, labels.iloc[[0]].assign(coordX=1e4)]).to_csv(labels_csv, index=False)
    cfg = make_config(f"data.labels_csv={labels_csv}", "data.outside=skip", model="tabular")  # no patches to cut
    module = hydra.utils.instantiate(cfg.data, _convert_="partial")
    for stage in ("fit", "test"):  # as trainer.fit, then trainer.test
        module.prepare_data()
        module.setup(stage)
    assert caplog.text.count("skipping 1 point(s) outside their scan") == 1
