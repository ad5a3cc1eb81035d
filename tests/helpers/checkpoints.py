"""Checkpoint files for tests: tiny untrained lungexp checkpoints, and MedicalNet-style ones built from
MedicalNet's own naming (``models/resnet.py``, ``train.py``), independently of
:class:`lungexp.models.ResNet3D`; nothing is downloaded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungexp.data.labels.targets import TargetOptions
from lungexp.data.patches.extraction import PatchSpec
from lungexp.models import CNN3D
from lungexp.models.heads import head_outputs
from lungexp.training.checkpoint import RECIPE_KEY, ModelRecipe
from lungexp.training.module import VALIDATION_PREDICTIONS

NET = {"_target_": "lungexp.models.CNN3D", "in_channels": 1, "num_classes": 1, "widths": [4, 8]}
DATA = {"_target_": "lungexp.data.loading.datamodule.NoduleDataModule", "root": "/data/luna16",
        "labels_csv": "${data.root}/candidates_V2.csv", "cache_dir": "/data/cache", "task": "candidates"}

MEDICALNET_STAGE_WIDTHS = (64, 128, 256, 512)
MEDICALNET_BASIC_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2)}


def _batchnorm(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    stats = ("weight", "bias", "running_mean", "running_var")
    return {f"{prefix}.{name}": (channels,) for name in stats} | {f"{prefix}.num_batches_tracked": ()}


def medicalnet_key_shapes(depth: int, shortcut: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a MedicalNet basic-block ResNet state dict (after ``module.``), as in its models/resnet.py:
    stem conv1 (64, 1, 7³), bn1, layer{1..4}.{i}.conv1/bn1/conv2/bn2, shortcut B ``downsample.0`` (1³ conv)
    + ``downsample.1`` (BN) on every stage-opening block that changes stride or width, then the
    segmentation decoder ``conv_seg`` (which a classifier must drop)."""
    shapes = {"conv1.weight": (64, 1, 7, 7, 7)} | _batchnorm("bn1", 64)
    inplanes = 64
    stages = zip(MEDICALNET_STAGE_WIDTHS, MEDICALNET_BASIC_BLOCKS[depth], strict=True)
    for stage, (planes, blocks) in enumerate(stages, 1):
        for index in range(blocks):
            block = f"layer{stage}.{index}"
            shapes[f"{block}.conv1.weight"] = (planes, inplanes, 3, 3, 3)
            shapes |= _batchnorm(f"{block}.bn1", planes)
            shapes[f"{block}.conv2.weight"] = (planes, planes, 3, 3, 3)
            shapes |= _batchnorm(f"{block}.bn2", planes)
            if shortcut == "B" and index == 0 and stage > 1:
                shapes[f"{block}.downsample.0.weight"] = (planes, inplanes, 1, 1, 1)
                shapes |= _batchnorm(f"{block}.downsample.1", planes)
            inplanes = planes
    shapes |= {"conv_seg.0.weight": (512, 32, 2, 2, 2), "conv_seg.0.bias": (32,)} | _batchnorm(
        "conv_seg.1", 32
    )
    shapes |= {"conv_seg.3.weight": (32, 32, 3, 3, 3)} | _batchnorm("conv_seg.4", 32)
    shapes |= {"conv_seg.6.weight": (2, 32, 1, 1, 1)}
    return shapes


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Seeded small tensors of these shapes, with plausible BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            tensors[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            tensors[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            tensors[key] = torch.randn(shape, generator=generator) * 0.05
    return tensors


def save_medicalnet_checkpoint(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """MedicalNet's train.py container: DataParallel keys under ``state_dict`` plus bookkeeping."""
    torch.save(
        {"ecpoch": 200, "batch_id": 0, "state_dict": {f"module.{k}": v for k, v in tensors.items()}}, path
    )
    return path


def write_checkpoint(path: Path, net: dict[str, Any] = NET, data: dict[str, Any] = DATA,
                     evaluation: dict[str, Any] | None = None, target: TargetOptions | None = None,
                     validation: Mapping[str, np.ndarray] | None = None) -> Path:
    """A lungexp checkpoint of a tiny untrained CNN3D (16³ patches) whose recipe stores ``net`` and ``data``; for
    a ``target`` other than the default, with one output per logit of its heads; with ``validation``, those
    validation predictions (by column, as training stores them: what a calibration is fitted on)."""
    target = target or TargetOptions()
    outputs = sum(head_outputs(head.kind, head.num_classes) for head in target.heads)
    recipe = ModelRecipe(task="candidates", net={**net, "num_classes": outputs} if outputs > 1 else net,
                         patch=PatchSpec(size=16), hu_window=(-1000.0, 400.0), normalize="unit", data=data,
                         target=target.to_config())
    weights = {f"net.{key}": value for key, value in CNN3D(widths=(4, 8), num_classes=outputs).state_dict().items()}
    stored = {} if validation is None else {
        VALIDATION_PREDICTIONS: {column: torch.as_tensor(values) for column, values in validation.items()}}
    torch.save({RECIPE_KEY: recipe.to_dict(), "state_dict": weights,
                "hyper_parameters": {"evaluation": evaluation or {"threshold": "youden"}}, **stored}, path)
    return path
