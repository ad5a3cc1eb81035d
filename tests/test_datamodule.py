"""The datamodule from real configs: normalisation, augmentation only in training, balanced sampling."""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import torch

from lungexp.data.dataset import HUWindow


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
    with pytest.raises(ValueError, match="unknown data.normalize"):
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
