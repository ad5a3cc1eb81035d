"""Building blocks every network shares: the classifier head and the weight initialisation.

Network contract (relied on by the LightningModule, the pretrained loader and the fine-tuning helpers):
input (B, C, D, H, W) float, output logits (B, num_classes); the classifier is the attribute ``head``
(global average pooling, dropout, linear) and everything else is the backbone; ``stem_conv`` is the
first convolution, the one whose input channels are adapted when loading weights.
"""

from __future__ import annotations

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
