"""The plain tutorial 3D CNN, plus the classifier head and weight init shared by every network.

Network contract (relied on by the LightningModule, the pretrained loader and the fine-tuning helpers):
input (B, C, D, H, W) float, output logits (B, num_classes); the classifier is the attribute ``head``
(global average pooling, dropout, linear) and everything else is the backbone; ``stem_conv`` is the
first convolution, the one whose input channels are adapted when loading weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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


class ConvBlock(nn.Sequential):
    """``convs`` × (conv3³-BN-ReLU) followed by a 2× max-pool.

    ``ceil_mode`` lets a 1-voxel map pass the pool, so deep ``widths`` lists still work at 32³.
    """

    def __init__(self, in_channels: int, out_channels: int, convs: int) -> None:
        layers: list[nn.Module] = []
        for index in range(convs):
            layers += [
                nn.Conv3d(
                    in_channels if index == 0 else out_channels, out_channels, 3, padding=1, bias=False
                ),
                nn.BatchNorm3d(out_channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.MaxPool3d(kernel_size=2, ceil_mode=True))
        super().__init__(*layers)


class CNN3D(nn.Module):
    """Tutorial 3D CNN: one :class:`ConvBlock` per entry of ``widths`` (so depth = ``len(widths)``), then the head.

    The stem convolution is ``features[0][0]`` (also exposed as ``stem_conv``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.3,
        convs_per_block: int = 1,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("CNN3D needs at least one width")
        channels = [in_channels, *widths]
        self.features = nn.Sequential(
            *(ConvBlock(channels[i], channels[i + 1], convs_per_block) for i in range(len(widths)))
        )
        self.head = classifier_head(widths[-1], num_classes, dropout)
        kaiming_init_(self)

    @property
    def stem_conv(self) -> nn.Conv3d:
        return self.features[0][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
