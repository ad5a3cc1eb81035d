"""Batch augmentation on the device (aug=batch_light|batch_strong): exact where it must be, within its ranges,
seeded, and only ever applied to training batches."""

from __future__ import annotations

import hydra
import pytest
import pytorch_lightning as pl
import torch
from kornia.augmentation import RandomDepthicalFlip3D, RandomHorizontalFlip3D, RandomVerticalFlip3D

from lungexp.data.loading.batch_augmentation import RandomAffine, RandomBlur, RandomGamma, RandomNoise
from lungexp.data.names import IMAGE_KEY, INDEX_KEY, LABEL_KEY

FLIPS = [(RandomDepthicalFlip3D, -3), (RandomVerticalFlip3D, -2), (RandomHorizontalFlip3D, -1)]


@pytest.fixture
def batch() -> torch.Tensor:
    torch.manual_seed(0)
    patches = torch.rand(6, 1, 12, 12, 12)
    patches[:, :, 0, 0, 0] = 0.0  # air, as after the HU window
    return patches


def test_identity_affine_gives_the_input_back(batch: torch.Tensor) -> None:
    identity = RandomAffine(scales=(1.0, 1.0), degrees=0.0, translation=0.0, p=1.0)
    # grid_sample's normalised coordinates round in float32: the input back to 1e-6, not bit for bit.
    torch.testing.assert_close(identity(batch), batch, rtol=0, atol=1e-5)
    assert not torch.allclose(RandomAffine(p=1.0)(batch), batch, atol=1e-3)


@pytest.mark.parametrize(("flip", "dim"), FLIPS)
def test_each_flip_is_exact_and_its_own_inverse(batch: torch.Tensor, flip: type, dim: int) -> None:
    always = flip(p=1.0)
    flipped = always(batch)
    assert torch.equal(flipped, batch.flip(dim))
    assert torch.equal(always(flipped), batch)


def test_affine_moves_a_marked_voxel_where_its_matrix_says() -> None:
    grid = torch.stack(torch.meshgrid(*[torch.arange(24.0)] * 3, indexing="ij"))  # (z, y, x)
    marked = torch.tensor([9.0, 11.0, 14.0])  # (z, y, x)
    blob = torch.exp(-((grid - marked.view(3, 1, 1, 1)) ** 2).sum(0) / (2 * 1.5**2))[None, None]
    affine = RandomAffine(scales=(0.9, 1.1), degrees=20.0, translation=3.0, p=1.0)
    torch.manual_seed(3)
    moved = affine(blob)
    matrix = affine.transform_matrix[0]  # source -> destination voxels, in (x, y, z) order
    expected = (matrix @ torch.tensor([*marked.flip(0), 1.0]))[:3].flip(0)
    weights = moved[0, 0].clamp_min(0)
    found = (grid * weights).sum((1, 2, 3)) / weights.sum()
    assert torch.dist(marked, expected) > 1.0, "the draw should move the voxel"
    torch.testing.assert_close(found, expected, rtol=0, atol=0.35)


def test_sampled_parameters_stay_within_the_configured_ranges() -> None:
    torch.manual_seed(0)
    draws = 4000
    affine = RandomAffine(scales=(0.8, 1.2), degrees=25.0, translation=3.0, p=0.75)
    params = affine.forward_parameters((draws, 1, 16, 16, 16))
    for name, low, high in (("scale", 0.8, 1.2), ("angles", -25.0, 25.0), ("translations", -3.0, 3.0)):
        values = params[name]
        assert values.shape == (draws, 3)
        assert values.min() >= low and values.max() <= high, name
        assert values.min() < low + 0.05 * (high - low) and values.max() > high - 0.05 * (high - low), name
    assert params["batch_prob"].float().mean() == pytest.approx(0.75, abs=0.03)
    for transform, low, high in ((RandomNoise(std=(0.0, 0.04)), 0.0, 0.04),
                                 (RandomGamma(log_gamma=(-0.2, 0.2)), 0.2, 0.2),
                                 (RandomBlur(std=(0.0, 0.7)), 0.0, 0.7)):
        values = transform.sample_parameters(draws)
        if isinstance(transform, RandomGamma):
            values, low, high = values.log(), -low, high
        assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, type(transform).__name__
        assert values.max() - values.min() > 0.9 * (high - low), type(transform).__name__


def test_intensity_transforms_fire_with_their_probability_and_leave_the_rest_exact() -> None:
    torch.manual_seed(1)
    patches = torch.rand(2000, 1, 4, 4, 4)
    for transform in (RandomNoise(std=(0.01, 0.02), p=0.25), RandomGamma(log_gamma=(0.1, 0.2), p=0.25),
                      RandomBlur(std=(0.5, 0.7), p=0.25)):
        changed = (transform(patches) != patches).flatten(1).any(1)
        assert changed.float().mean() == pytest.approx(0.25, abs=0.04), type(transform).__name__


def test_one_seed_gives_identical_batches(make_config, batch: torch.Tensor) -> None:
    augment = hydra.utils.instantiate(make_config("aug=batch_strong").aug.batch)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(augment(batch))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_only_training_batches_are_augmented(make_config, batch: torch.Tensor) -> None:
    module = hydra.utils.instantiate(make_config("aug=batch_light").model)
    module.trainer = trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    labelled = {IMAGE_KEY: batch, LABEL_KEY: torch.zeros(len(batch)), INDEX_KEY: torch.arange(len(batch))}
    for stage in ("validating", "testing", "sanity_checking", "predicting", "training"):
        setattr(trainer, stage, True)
        out = module.on_after_batch_transfer(dict(labelled), 0)
        assert torch.equal(out[LABEL_KEY], labelled[LABEL_KEY]) and torch.equal(out[INDEX_KEY], labelled[INDEX_KEY])
        assert torch.equal(out[IMAGE_KEY], batch) == (stage != "training"), stage
