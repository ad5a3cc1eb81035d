"""Building blocks every network shares: the ResNet stem, the classifier head and the weight initialisation.

Network contract (relied on by the LightningModule, the pretrained loader and the fine-tuning helpers):
input (B, C, D, H, W) float, output logits (B, num_classes); the classifier is the attribute ``head``
(global average pooling, dropout, linear) and everything else is the backbone; ``stem_conv`` is the
first convolution, the one whose input channels are adapted when loading weights.
"""

from __future__ import annotations

import torch
from torch import nn


class StemNetwork(nn.Module):
    """Base of the networks that open with the ResNet stem (He et al. 2016, https://arxiv.org/abs/1512.03385):
    a 7³ stride-2 convolution, BN, ReLU and a 3³ stride-2 max-pool, i.e. 4× downsampling.

    The attributes are named as in MedicalNet's ``models/resnet.py`` (``conv1``, ``bn1``, ``relu``,
    ``maxpool``) so its checkpoints load; subclasses register their own layers after calling this
    constructor and start their ``forward`` with :meth:`stem`.

    Args:
        in_channels: channels of the input volume (one per patch scale).
        stem_channels: output channels of the stem convolution.
    """

    def __init__(self, in_channels: int, stem_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)

    @property
    def stem_conv(self) -> nn.Conv3d:
        return self.conv1

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def classifier_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Global average pooling + dropout + linear: size-agnostic, so one network serves 32³, 48³ and 64³."""
    return nn.Sequential(
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(1),
        nn.Dropout(dropout),
        nn.Linear(in_features, num_classes),
    )


def kaiming_init_(module: nn.Module) -> None:
    """MedicalNet's initialisation (He normal, fan-out for convs; BN scale 1, shift 0) for every network,
    so architectures differ only in structure, not in init."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv3d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm3d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
