"""Losses: focal loss against BCE, and choosing the loss from config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lungexp.config.check import check
from lungexp.training.losses import BinaryFocalLoss
from lungexp.training.pipeline import train

LOGITS = torch.tensor([3.0, -2.0, 0.1, -0.3, 4.0])
TARGETS = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])


def test_focal_loss_without_focusing_is_bce() -> None:
    weight = torch.tensor(3.0)
    torch.testing.assert_close(BinaryFocalLoss(gamma=0.0, pos_weight=weight)(LOGITS, TARGETS),
                               nn.BCEWithLogitsLoss(pos_weight=weight)(LOGITS, TARGETS))


def test_focal_loss_down_weights_easy_examples() -> None:
    easy, hard = torch.tensor([4.0]), torch.tensor([-0.5])  # both positives
    ratio_easy = BinaryFocalLoss(gamma=2.0)(easy, torch.ones(1)) / nn.BCEWithLogitsLoss()(easy, torch.ones(1))
    ratio_hard = BinaryFocalLoss(gamma=2.0)(hard, torch.ones(1)) / nn.BCEWithLogitsLoss()(hard, torch.ones(1))
    assert ratio_easy < 0.01 < 0.3 < ratio_hard


def test_focal_loss_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="gamma >= 0"):
        BinaryFocalLoss(gamma=-1.0)


def test_loss_is_chosen_in_config(make_config) -> None:
    cfg = make_config("trainer=debug", "model.loss._target_=lungexp.training.losses.BinaryFocalLoss",
                      "+model.loss.gamma=1.5", "model.pos_weight=2.0")
    from lungexp.training.pipeline import build

    _, model, _ = build(check(cfg, "run"))
    assert isinstance(model.criterion, BinaryFocalLoss) and model.criterion.gamma == 1.5
    assert "test/auroc" in train(check(cfg, "run")).metrics
