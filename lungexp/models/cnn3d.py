"""The plain tutorial 3D CNN: conv-BN-ReLU-pool blocks, global pooling, dropout, linear head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from lungexp.models.layers import classifier_head, kaiming_init_
from lungexp.utils.errors import ArgumentError


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

    The plain conv-BN-ReLU-pool baseline (no paper to follow); the stem convolution is ``features[0][0]``
    (also exposed as ``stem_conv``). Initialised like the other networks
    (:func:`~lungexp.models.layers.kaiming_init_`).

    Args:
        in_channels: channels of the input patch (``data.in_channels``: one per patch scale).
        num_classes: outputs of the linear head; 1 for the binary tasks (one logit, BCE).
        widths: output channels of each block; each block also halves the size (2× max-pool).
        dropout: dropout probability before the linear head.
        convs_per_block: conv-BN-ReLU layers per block before its pool (2 = VGG-style).

    Raises:
        ArgumentError: (a ``ValueError``) ``widths`` is empty.
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
            raise ArgumentError("widths is empty: CNN3D needs at least one width")
        channels = [in_channels, *widths]
        self.features = nn.Sequential(
            *(ConvBlock(channels[i], channels[i + 1], convs_per_block) for i in range(len(widths)))
        )
        self.head = classifier_head(widths[-1], num_classes, dropout)
        kaiming_init_(self)

    @property
    def stem_conv(self) -> nn.Conv3d:
        first_block = cast(ConvBlock, self.features[0])  # nn.Sequential's items are typed as nn.Module
        return cast(nn.Conv3d, first_block[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
