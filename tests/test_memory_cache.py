"""data.cache_memory=ram|device serve batch for batch what the memory-mapped DataLoader path serves, and refuse a
cache that does not fit with the sizes and the alternative."""

from __future__ import annotations

import hydra
import pytest
import torch

from lungexp.data.loading import datamodule
from lungexp.data.loading.memory_cache import CacheMemoryError, check_fits
from lungexp.utils.errors import ArgumentError, ConfigError
from tests.test_datamodule import instantiate_data


def _setup(make_config, *overrides: str):
    module = hydra.utils.instantiate(make_config("aug=none", *overrides).data, _convert_="partial")
    module.prepare_data()
    module.setup("fit")
    return module


def _batches(module, loader: str) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)  # the training sampler's seed
    return list(getattr(module, loader)())


@pytest.mark.parametrize("normalize", ["unit", "zscore"])
def test_memory_caches_serve_the_dataloader_batches(make_config, normalize: str) -> None:
    overrides = ("data.balance.sampler=balanced", f"data.normalize={normalize}")
    reference = _setup(make_config, *overrides)
    for memory in ("ram", "device"):
        module = _setup(make_config, *overrides, f"data.cache_memory={memory}")
        assert (memory == "device") == bool(module.device_batches)
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            expected, served = (_batches(m, loader) for m in (reference, module))
            assert len(served) == len(expected) > 1
            for ours, theirs in zip(served, expected, strict=True):
                assert ours.keys() == theirs.keys()
                for key, value in theirs.items():
                    assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), (memory, loader, key)


def test_a_cache_larger_than_the_free_memory_is_refused(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datamodule, "free_bytes", lambda device: 1000)  # bytes free, on any device
    for memory, alternative in (("device", "data.cache_memory=ram"), ("ram", "data.cache_memory=mmap")):
        with pytest.raises(CacheMemoryError, match=rf"data.cache_memory={memory} \(\d+ .*patches.*\): needs 0\.\d+ GB, "
                                                  rf"but .* has 0\.00 GB free; use {alternative}"):
            _setup(make_config, f"data.cache_memory={memory}")


def test_the_fit_check_counts_every_rank_sharing_the_memory() -> None:
    check_fits(4 * 10**9, 16 * 10**9, what="x", where="host memory", alternative="y", copies=4)
    with pytest.raises(CacheMemoryError, match="x: 4 ranks each hold 5.00 GB, 20.00 GB in all, but host memory has "
                                               "16.00 GB free; y"):
        check_fits(5 * 10**9, 16 * 10**9, what="x", where="host memory", alternative="y", copies=4)


def test_device_cache_refuses_per_patch_augmentation_and_unknown_values(make_config) -> None:
    with pytest.raises(ConfigError, match="data.cache_memory=device .* use aug=batch_light"):
        instantiate_data(make_config("aug=light", "data.cache_memory=device"))
    with pytest.raises(ArgumentError, match="^cache_memory='gpu' is not a valid choice"):  # the parameter's name
        instantiate_data(make_config("data.cache_memory=gpu"))
