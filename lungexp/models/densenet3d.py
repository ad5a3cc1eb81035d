"""DenseNet-121-style 3D network (Huang et al. 2017), built from scratch (no 3D pretrained weights exist
for it in this project; :func:`lungexp.models.pretrained.load_pretrained` still accepts our own
checkpoints of it)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lungexp.models.layers import StemNetwork, classifier_head, kaiming_init_


class DenseLayer(nn.Module):
    """BN-ReLU-conv1³ bottleneck to ``bn_size * growth_rate`` channels, then BN-ReLU-conv3³ to
    ``growth_rate`` new feature maps, concatenated onto everything before it."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        bottleneck = bn_size * growth_rate
        self.layers = nn.Sequential(
            nn.BatchNorm3d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(in_channels, bottleneck, kernel_size=1, bias=False),
            nn.BatchNorm3d(bottleneck),
            nn.ReLU(inplace=True),
            nn.Conv3d(bottleneck, growth_rate, kernel_size=3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layers(x)], dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1³ halving the channels, then a 2× average pool (``ceil_mode`` keeps 1-voxel maps)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.BatchNorm3d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.AvgPool3d(kernel_size=2, stride=2, ceil_mode=True),
        )


class DenseNet3D(StemNetwork):
    """3D DenseNet from `Densely Connected Convolutional Networks <https://arxiv.org/abs/1608.06993>`_
    (Huang et al. 2017); the defaults are DenseNet-121.

    The stem is the ResNet one (:class:`~lungexp.models.layers.StemNetwork`: 7³ stride-2 ``conv1``, also
    ``stem_conv``, + BN + ReLU + 3³ stride-2 max-pool), so DenseNet and the ResNets see the same receptive
    field at the start. Dense blocks follow, separated by transitions that halve channels and size.

    Args:
        in_channels: channels of the input patch (``data.in_channels``: one per patch scale).
        num_classes: outputs of the linear head; 1 for the binary tasks (one logit, BCE).
        growth_rate: feature maps each dense layer adds (``k`` in the paper).
        block_config: dense layers per block; the number of entries is the number of blocks
            (``(6, 12, 24, 16)`` = DenseNet-121).
        num_init_features: output channels of the stem convolution.
        bn_size: width factor of each layer's 1³ bottleneck (``bn_size * growth_rate`` channels).
        dropout: dropout probability before the linear head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(in_channels, num_init_features)
        stages: list[nn.Module] = []
        channels = num_init_features
        for index, num_layers in enumerate(block_config):
            stages += [
                DenseLayer(channels + i * growth_rate, growth_rate, bn_size) for i in range(num_layers)
            ]
            channels += num_layers * growth_rate
            if index < len(block_config) - 1:
                stages.append(Transition(channels, channels // 2))
                channels //= 2
        stages += [nn.BatchNorm3d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*stages)
        self.head = classifier_head(channels, num_classes, dropout)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)))
