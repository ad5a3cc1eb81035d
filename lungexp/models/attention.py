"""Channel/spatial attention blocks that plug into a residual block before the residual addition.

They are kept separate from the ResNet so that "attention or not" is a single constructor switch
(``ResNet3D(attention=...)``): every other parameter name and shape stays identical, which keeps the
comparison fair and lets MedicalNet weights load into the attention variants too.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lungexp.utils.errors import ArgumentError, did_you_mean

AttentionKind = Literal["none", "se", "cbam"]
ATTENTION_KINDS: tuple[str, ...] = ("none", "se", "cbam")


def _hidden_channels(channels: int, reduction: int) -> int:
    """Bottleneck width of the excitation MLP; at least 1 so tiny test networks still work."""
    return max(1, channels // reduction)


class SqueezeExcitation3D(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): re-weight channels from globally pooled context."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = _hidden_channels(channels, reduction)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.excite = nn.Sequential(
            nn.Conv3d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(self.pool(x))


class ChannelAttention3D(nn.Module):
    """CBAM channel attention: a shared MLP applied to average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = _hidden_channels(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Conv3d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(torch.mean(x, dim=(2, 3, 4), keepdim=True))
        peak = self.mlp(torch.amax(x, dim=(2, 3, 4), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention3D(nn.Module):
    """CBAM spatial attention: a k³ convolution over the channel-wise mean and max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptors = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(descriptors))


class CBAM3D(nn.Sequential):
    """Convolutional block attention module (Woo et al. 2018): channel then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention3D(channels, reduction)
        self.spatial = SpatialAttention3D(spatial_kernel_size)


def build_attention(kind: AttentionKind, channels: int, reduction: int = 16) -> nn.Module:
    """The attention module for ``kind``; ``"none"`` is a parameter-free identity (adds no state-dict keys)."""
    if kind == "none":
        return nn.Identity()
    if kind == "se":
        return SqueezeExcitation3D(channels, reduction)
    if kind == "cbam":
        return CBAM3D(channels, reduction)
    raise ArgumentError(f"attention={kind!r} is not a valid choice{did_you_mean(kind, ATTENTION_KINDS)}; "
                        f"choose one of: {', '.join(ATTENTION_KINDS)}")
