"""Losses for one-logit binary classification under heavy class imbalance.

Every loss here takes ``pos_weight`` like ``torch.nn.BCEWithLogitsLoss``, so the LightningModule
can set it (``model.pos_weight``) whichever loss the config picks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from lungexp.utils.errors import ConfigError


class BinaryFocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017) on logits: BCE scaled by ``(1 - p_t) ** gamma``.

    Easy, confidently-correct patches (most vessel and wall candidates) contribute little, so the
    hard negatives and the rare nodules drive training. ``gamma=0`` and ``alpha=None`` is plain BCE.

    Args:
        gamma: focusing strength.
        alpha: optional weight of positives (negatives get ``1 - alpha``).
        pos_weight: BCE weight of positives, as in ``BCEWithLogitsLoss``.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0 or (alpha is not None and not 0 <= alpha <= 1):
            raise ConfigError(f"model.loss: focal loss needs gamma >= 0 and alpha in [0, 1] (or null), got "
                              f"gamma={gamma}, alpha={alpha}")
        self.gamma = gamma
        self.alpha = alpha
        self.pos_weight: torch.Tensor  # a buffer: moves with the module and is saved with it
        self.register_buffer("pos_weight", torch.ones(()) if pos_weight is None else pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight,
                                                          reduction="none")
        probabilities = torch.sigmoid(logits)
        p_true = probabilities * targets + (1 - probabilities) * (1 - targets)
        loss = (1 - p_true) ** self.gamma * bce
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss.mean()
