"""3D ResNet in the exact Tencent MedicalNet layout, with optional SE/CBAM attention.

Parameter names and shapes follow MedicalNet's ``models/resnet.py`` (``conv1``, ``bn1``, ``layer1..4``
of ``BasicBlock``/``Bottleneck`` with ``conv*``/``bn*``/``downsample.{0,1}``) so that its released
checkpoints load strictly (see :mod:`lungexp.models.pretrained`). MedicalNet's segmentation decoder
(``conv_seg``) is replaced by the classification ``head``.

Attention is a constructor switch, not a separate architecture: the attention module sits in every
residual block after the last BN and before the residual addition, under the name ``attention``;
with ``attention="none"`` it is an identity with no state, so the plain network's state dict is
exactly MedicalNet's and the attention variants only *add* keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lungexp.models.attention import AttentionKind, build_attention
from lungexp.models.layers import StemNetwork, classifier_head, kaiming_init_
from lungexp.utils.errors import ArgumentError, look_up_option

ShortcutType = Literal["A", "B"]

MEDICALNET_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    """3³ convolution whose padding equals its dilation, so only the stride changes the spatial size."""
    return nn.Conv3d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


class ZeroPadShortcut(nn.Module):
    """Shortcut type A (MedicalNet's ``downsample_basic_block``): subsample by ``stride`` and zero-pad the
    extra channels. Parameter-free, hence absent from the state dict, exactly as in MedicalNet."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        # F.pad lists (before, after) pairs from the last dimension backwards; the 4th pair is channels.
        return F.pad(out, (0, 0, 0, 0, 0, 0, 0, self.out_channels - out.shape[1]))


def make_shortcut(shortcut_type: ShortcutType, in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Type A: parameter-free zero padding; type B: 1³ projection + BN (keys ``downsample.0/1``)."""
    if shortcut_type == "A":
        return ZeroPadShortcut(out_planes, stride)
    return nn.Sequential(
        nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm3d(out_planes),
    )


class ResidualBlock(nn.Module):
    """What Basic and Bottleneck blocks share: the constructor, attention, shortcut and final ReLU.

    Subclasses build their residual branch in :meth:`build_residual` and run it in :meth:`residual`.

    Args:
        inplanes: input channels.
        planes: width of the branch; the block outputs ``planes * expansion`` channels.
        stride: stride of the branch's 3³ convolution (2 halves the size).
        dilation: dilation (and padding) of the branch's 3³ convolutions.
        downsample: shortcut that matches the input to the output shape (see :func:`make_shortcut`),
            ``None`` for the identity.
        attention: ``"none"``, ``"se"`` or ``"cbam"``, applied to the branch before the addition.
        reduction: channel reduction of the attention MLP.
    """

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        attention: AttentionKind = "none",
        reduction: int = 16,
    ) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.attention = build_attention(attention, planes * self.expansion, reduction)
        self.build_residual(inplanes, planes, stride, dilation)

    def build_residual(self, inplanes: int, planes: int, stride: int, dilation: int) -> None:
        raise NotImplementedError

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.attention(self.residual(x)) + identity)


class BasicBlock(ResidualBlock):
    """Two 3³ convolutions (ResNet-10/18/34)."""

    expansion = 1

    def build_residual(self, inplanes: int, planes: int, stride: int, dilation: int) -> None:
        self.conv1 = conv3x3x3(inplanes, planes, stride=stride, dilation=dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(ResidualBlock):
    """1³ reduce, 3³, 1³ expand ×4 (ResNet-50)."""

    expansion = 4

    def build_residual(self, inplanes: int, planes: int, stride: int, dilation: int) -> None:
        self.conv1 = nn.Conv3d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, stride=stride, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


# depth -> (block type, blocks per stage, MedicalNet's shortcut for its released weights)
RESNET_SPECS: dict[int, tuple[type[ResidualBlock], tuple[int, int, int, int], ShortcutType]] = {
    10: (BasicBlock, (1, 1, 1, 1), "B"),
    18: (BasicBlock, (2, 2, 2, 2), "A"),
    34: (BasicBlock, (3, 4, 6, 3), "A"),
    50: (Bottleneck, (3, 4, 6, 3), "B"),
}


class ResNet3D(StemNetwork):
    """3D ResNet-{10,18,34,50} of `Med3D: Transfer Learning for 3D Medical Image Analysis
    <https://arxiv.org/abs/1904.00625>`_ (MedicalNet, Chen et al. 2019), after `Deep Residual Learning for
    Image Recognition <https://arxiv.org/abs/1512.03385>`_ (He et al. 2016), with a classification head.

    The stem is ``conv1`` (also ``stem_conv``) + ``bn1`` + ReLU + max-pool
    (:class:`~lungexp.models.layers.StemNetwork`), then ``layer1..4`` of residual blocks and the ``head``.

    Args:
        depth: 10, 18 or 34 (:class:`BasicBlock`) or 50 (:class:`Bottleneck`).
        in_channels: channels of the input patch (``data.in_channels``: one per patch scale); MedicalNet
            weights have 1, and :func:`~lungexp.models.pretrained.load_pretrained` adapts their stem.
        num_classes: outputs of the linear head; 1 for the binary tasks (one logit, BCE).
        shortcut_type: ``"A"`` (parameter-free: subsample and zero-pad channels) or ``"B"`` (1³
            projection + BN); ``None`` picks the one MedicalNet trained that depth with (A for 18/34, B
            for 10/50), so its checkpoints load.
        dilated: MedicalNet's segmentation layout (layer3/layer4 stride 1, dilation 2/4: larger final map,
            about 4× the compute). ``False`` (classification default) strides layer2/3/4 by 2 instead.
            Both layouts have identical parameters.
        dropout: dropout probability before the linear head.
        widths: planes of layer1..layer4 (the stem has ``widths[0]`` channels); only changed for tiny
            test networks (MedicalNet weights need the default).
        attention: ``"none"``, ``"se"`` (squeeze-and-excitation, `Hu et al. 2018
            <https://arxiv.org/abs/1709.01507>`_) or ``"cbam"`` (`Woo et al. 2018
            <https://arxiv.org/abs/1807.06521>`_), in every block after the last BN and before the
            addition; it only adds ``*.attention.*`` keys.
        attention_reduction: channel reduction of the attention MLP.

    Raises:
        ArgumentError: (a ``ValueError``) naming the parameter: ``depth`` is not in :data:`RESNET_SPECS`,
            ``widths`` has not 4 entries, or ``shortcut_type`` is not ``"A"``, ``"B"`` or ``None``.
    """

    def __init__(
        self,
        depth: int = 18,
        in_channels: int = 1,
        num_classes: int = 1,
        shortcut_type: ShortcutType | None = None,
        dilated: bool = False,
        dropout: float = 0.2,
        widths: Sequence[int] = MEDICALNET_WIDTHS,
        attention: AttentionKind = "none",
        attention_reduction: int = 16,
    ) -> None:
        look_up_option("depth", depth, sorted(RESNET_SPECS), error=ArgumentError)
        if len(widths) != 4:
            raise ArgumentError(f"widths={list(widths)}: ResNet3D needs 4 stage widths")
        block, blocks_per_stage, medicalnet_shortcut = RESNET_SPECS[depth]
        shortcut = look_up_option("shortcut_type", shortcut_type or medicalnet_shortcut, ["A", "B"],
                                  error=ArgumentError)
        strides, dilations = ((1, 2, 1, 1), (1, 1, 2, 4)) if dilated else ((1, 2, 2, 2), (1, 1, 1, 1))

        super().__init__(in_channels, widths[0])
        inplanes = widths[0]
        stages: list[nn.Sequential] = []
        for planes, blocks, stride, dilation in zip(
            widths, blocks_per_stage, strides, dilations, strict=True
        ):
            out_planes = planes * block.expansion
            downsample = (
                make_shortcut(shortcut, inplanes, out_planes, stride)
                if stride != 1 or inplanes != out_planes
                else None
            )
            stage = [block(inplanes, planes, stride, dilation, downsample, attention, attention_reduction)]
            stage += [
                block(out_planes, planes, 1, dilation, None, attention, attention_reduction)
                for _ in range(1, blocks)
            ]
            stages.append(nn.Sequential(*stage))
            inplanes = out_planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = classifier_head(inplanes, num_classes, dropout)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.head(x)


class SEResNet3D(ResNet3D):
    """:class:`ResNet3D` with squeeze-and-excitation (`Hu et al. 2018 <https://arxiv.org/abs/1709.01507>`_)
    in every residual block; the other arguments are :class:`ResNet3D`'s."""

    def __init__(self, depth: int = 18, **kwargs: Any) -> None:
        super().__init__(depth=depth, attention="se", **kwargs)


class CBAMResNet3D(ResNet3D):
    """:class:`ResNet3D` with CBAM, channel + spatial attention (`Woo et al. 2018
    <https://arxiv.org/abs/1807.06521>`_), in every residual block; the other arguments are :class:`ResNet3D`'s."""

    def __init__(self, depth: int = 18, **kwargs: Any) -> None:
        super().__init__(depth=depth, attention="cbam", **kwargs)
