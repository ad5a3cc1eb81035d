"""Grad-CAM on every model option, in fp32 under bf16, and on a tiny model trained to find spheres."""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import torch
from torch import nn

from lungexp.models import CNN3D
from lungexp.utils.errors import ConfigError
from lungexp.visualize.gradcam import gradcam_heatmaps, last_conv3d
from tests.helpers.config import IMAGE_MODELS

SIZE = 16  # the tests' patch size (FAST_OVERRIDES)


def sphere_patches(count: int, rng: np.random.Generator, radius: float = 2.5, with_sphere: bool = True
                   ) -> tuple[torch.Tensor, np.ndarray]:
    """Noisy [0, 1] patches, each with a bright sphere at a random off-centre position; and the centres (z, y, x)."""
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"), axis=-1)
    images = rng.normal(0.2, 0.1, (count, 1, SIZE, SIZE, SIZE)).astype(np.float32)
    centres = rng.uniform(radius + 1, SIZE - radius - 1, (count, 3))
    if with_sphere:
        for image, centre in zip(images, centres, strict=True):
            image[0][((grid - centre) ** 2).sum(axis=-1) <= radius**2] += 0.7
    return torch.from_numpy(images), centres


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_every_model_gets_a_patch_sized_varying_heatmap_and_stays_untouched(make_config, model: str) -> None:
    torch.manual_seed(0)
    net = hydra.utils.instantiate(make_config(model=model).model.net).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images, _ = sphere_patches(2, np.random.default_rng(0))
    with torch.inference_mode():  # as in Lightning's test loop
        heatmaps = gradcam_heatmaps(net, images)
    assert heatmaps.shape == (2, SIZE, SIZE, SIZE)
    assert heatmaps.min() == 0.0 and heatmaps.max() == 1.0  # min-max scaled per patch
    assert all(heatmap.std() > 0.01 for heatmap in heatmaps), "a constant heatmap explains nothing"
    layer = dict(net.named_modules())[last_conv3d(net, images.shape[1:])]
    assert isinstance(layer, nn.Conv3d) and max(layer.kernel_size) > 1
    assert net.training, "the network's mode is left as it was"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules()), "no hooks left behind"


def test_last_conv3d_keeps_a_map_of_at_least_four_voxels(make_config) -> None:
    net = hydra.utils.instantiate(make_config(model="resnet3d").model.net)
    # a 16³ patch is 4³ after ResNet's stem and 1³ after layer3: layer1's last 3³ conv is the deepest at 4³
    assert last_conv3d(net, (1, SIZE, SIZE, SIZE)) == "layer1.0.conv2"
    assert last_conv3d(net, (1, 64, 64, 64)) == "layer3.0.conv2"


def test_heatmap_is_fp32_even_for_a_bf16_model() -> None:
    torch.manual_seed(0)
    net = CNN3D(widths=[4, 8]).to(torch.bfloat16)
    images = sphere_patches(2, np.random.default_rng(1))[0].to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_bf16 = gradcam_heatmaps(net, images)
    in_fp32 = gradcam_heatmaps(net.float(), images.float())  # the same (bf16-valued) weights and inputs
    assert under_bf16.dtype == np.float32
    np.testing.assert_array_equal(under_bf16, in_fp32)


def test_target_layer_override_and_a_wrong_name() -> None:
    net = CNN3D(widths=[4, 8])
    images, _ = sphere_patches(1, np.random.default_rng(2))
    assert gradcam_heatmaps(net, images, "features.0.0").shape == (1, SIZE, SIZE, SIZE)
    with pytest.raises(ConfigError, match="eval.gradcam.target_layer='features.9'.*features.1.0"):
        gradcam_heatmaps(net, images, "features.9")


@pytest.mark.slow
def test_heatmap_of_a_trained_model_peaks_inside_the_nodule() -> None:
    """A tiny cnn3d learns 'bright sphere = positive' on easy patches; its Grad-CAM must point at the sphere."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spheres, _ = sphere_patches(128, rng)
    background, _ = sphere_patches(128, rng, with_sphere=False)
    images, labels = torch.cat([spheres, background]), torch.cat([torch.ones(128), torch.zeros(128)])
    net = CNN3D(widths=[4, 8], dropout=0.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(6):
        for batch in torch.randperm(len(images)).split(32):
            loss = nn.functional.binary_cross_entropy_with_logits(net(images[batch]).squeeze(1), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    test_images, centres = sphere_patches(20, np.random.default_rng(1))
    with torch.no_grad():
        assert (torch.sigmoid(net(test_images)) > 0.5).float().mean() >= 0.9, "the tiny model did not learn"
    heatmaps = gradcam_heatmaps(net, test_images)
    peaks = np.array([np.unravel_index(heatmap.argmax(), heatmap.shape) for heatmap in heatmaps])
    inside = np.linalg.norm(peaks - centres, axis=1) <= 2.5 + 0.5  # radius + half a voxel
    assert inside.mean() > 0.5, f"peaks inside the sphere for {inside.mean():.0%} of the patches"
