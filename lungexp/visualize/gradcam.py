"""Grad-CAM on CT patches (MONAI's ``GradCAM``): where in the patch the evidence for "nodule" lies.

The heatmap explains the network's one logit (the nodule score) through the output of its last 3D
convolution that still sees the patch at 4³ or finer (:func:`last_conv3d`), found automatically for
every network of :mod:`lungexp.models` (``eval.gradcam.target_layer`` names another module). It is always computed in fp32 on a copy of the network, with autocast off, so a
model trained in bf16 gets the same map as in fp32 and the hooks never touch the trained network.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from lungexp.utils.errors import ConfigError
from lungexp.visualize.views import draw_views, short_uid

MIN_MAP_SIZE = 4  # voxels per side of the explained feature map


def last_conv3d(net: nn.Module, input_shape: Sequence[int]) -> str:
    """Dotted name of the last ``Conv3d`` run on an input of ``input_shape`` ``(C, z, y, x)`` whose output is at
    least :data:`MIN_MAP_SIZE` voxels on each side, has a kernel wider than one voxel and several channels.

    The kernel and channel rules skip 1³ projections (ResNet shortcuts, bottleneck expansions, SE/CBAM
    channel MLPs) and CBAM's one-channel spatial-attention conv. The size rule matters for ResNets on
    LUNA16-sized patches: their last stage sees a 32³ patch as 1³, and a map upsampled from one voxel
    is constant. If no convolution keeps that size, the one with the largest output is used.
    """
    probe = copy.deepcopy(net).eval()  # the trained network keeps its mode and gets no hooks
    outputs: list[tuple[str, int]] = []
    for name, module in probe.named_modules():
        if isinstance(module, nn.Conv3d) and max(module.kernel_size) > 1 and module.out_channels > 1:
            module.register_forward_hook(lambda _m, _i, out, name=name: outputs.append((name, min(out.shape[2:]))))
    parameter = next(probe.parameters())
    with torch.no_grad():
        probe(torch.zeros(1, *input_shape, dtype=parameter.dtype, device=parameter.device))
    if not outputs:
        raise ConfigError(f"{type(net).__name__} has no 3D convolution with a kernel > 1 voxel for Grad-CAM; "
                          "set eval.gradcam.target_layer to one of its modules")
    large = [name for name, size in outputs if size >= MIN_MAP_SIZE]
    return large[-1] if large else max(reversed(outputs), key=lambda output: output[1])[0]


def gradcam_heatmaps(net: nn.Module, images: torch.Tensor, target_layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps ``(N, z, y, x)`` of ``images`` ``(N, C, z, y, x)``, upsampled to the patch, each scaled
    from its minimum to its maximum onto [0, 1] (all zeros for a constant map).

    Args:
        net: a network of :mod:`lungexp.models` (one logit per patch); not modified.
        images: normalised patches, as the network takes them.
        target_layer: dotted module name; ``None``: :func:`last_conv3d`.
    """
    layer = target_layer or last_conv3d(net, images.shape[1:])
    if layer not in dict(net.named_modules()):
        raise ConfigError(f"eval.gradcam.target_layer={layer!r} is not a module of {type(net).__name__}; "
                          f"e.g. {last_conv3d(net, images.shape[1:])!r} (null finds the last 3D convolution)")
    from monai.visualize import GradCAM  # here: importing MONAI takes seconds, and only Grad-CAM needs it

    device = next(net.parameters()).device
    # Lightning tests under inference_mode, where nothing can be differentiated: leave it for the copy.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        explained = copy.deepcopy(net).float().eval()
        explained.requires_grad_(True)
        cam = GradCAM(nn_module=explained, target_layers=layer, postprocessing=lambda maps: maps)
        inputs = images.detach().clone().to(device=device, dtype=torch.float32).requires_grad_(True)
        maps = cam(inputs, class_idx=0)[:, 0].detach().cpu().numpy()
    flat = maps.reshape(len(maps), -1)
    low = flat.min(axis=1).reshape(-1, 1, 1, 1)
    span = flat.max(axis=1).reshape(-1, 1, 1, 1) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)


def gradcam_figure(hu: np.ndarray, heatmaps: np.ndarray, samples: pd.DataFrame, hu_window: tuple[float, float],
                   layer: str) -> Figure:
    """One row per sample: the three central slices (first channel, HU window) under the heatmap.

    Args:
        hu: ``(N, C, z, y, x)`` HU patches.
        heatmaps: ``(N, z, y, x)`` maps in [0, 1] (:func:`gradcam_heatmaps`).
        samples: ``label, probability, seriesuid`` of each patch, for the row titles.
        hu_window: grey-level window.
        layer: the explained module, named in the title.
    """
    fig = Figure(figsize=(6.0, 2.2 * len(samples) + 0.6), layout="constrained")
    fig.suptitle(f"Grad-CAM of the nodule score at {layer}", fontsize=10)
    rows = fig.subfigures(len(samples), 1, squeeze=False)[:, 0]
    for row, volume, heat, sample in zip(rows, hu, heatmaps, samples.itertuples(index=False), strict=True):
        draw_views(row.subplots(1, 3), volume[0], hu_window, heatmap=heat)
        kind = "nodule" if sample.label == 1 else "non-nodule"
        row.suptitle(f"{kind}, p = {sample.probability:.3f}   {short_uid(str(sample.seriesuid))}", fontsize=8)
    return fig


def pick_samples(predictions: pd.DataFrame, per_class: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``per_class`` positives, then as many negatives, drawn at random (seeded) from ``predictions``."""
    picked: Sequence[pd.DataFrame] = [
        predictions[predictions["label"] == label].sample(
            n=min(per_class, int((predictions["label"] == label).sum())), random_state=seed)
        for label in (1, 0)
    ]
    return pd.concat(picked)
