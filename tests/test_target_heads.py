"""Heads and losses of a target: how many logits each head takes, CORN's monotone cumulative probabilities and
its loss (against the reference implementation), class weights from the training split, and the multitask
loss, where a masked sample contributes nothing and a head without labels in a batch contributes 0."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import cohen_kappa_score
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.nn import functional

from lungexp.data.labels import targets
from lungexp.data.labels.class_maps import CLASS_MAPS, MASKED
from lungexp.data.labels.targets import HeadSpec, TargetOptions
from lungexp.models import heads
from lungexp.models.heads import (
    cumulative_probabilities,
    head_outputs,
    head_probabilities,
    level_probabilities,
    predicted_classes,
    split_head_logits,
)
from lungexp.training.losses import (
    BinaryFocalLoss,
    CornLoss,
    MultitaskLoss,
    head_loss,
    target_class_weights,
    target_loss,
)
from lungexp.utils.errors import ArgumentError, ConfigError

TEXTURE = HeadSpec(name="texture", kind="multiclass", column="texture", rule=CLASS_MAPS["texture3"], weight=0.5)
SPICULATION = HeadSpec(name="spiculation", kind="ordinal", column="spiculation", rule=CLASS_MAPS["rating"])
LIDC = TargetOptions(HeadSpec(), (TEXTURE, SPICULATION))  # outputs 1 + 3 + 4


def reference_corn_loss(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """coral_pytorch's ``corn_loss`` (Raschka et al.), as published."""
    sets = []
    for i in range(num_classes - 1):
        label_mask = y > i - 1
        sets.append((label_mask, (y[label_mask] > i).to(torch.int64)))
    num_examples, losses = 0, 0.0
    for task_index, (train_examples, train_labels) in enumerate(sets):
        if len(train_labels) < 1:
            continue
        num_examples += len(train_labels)
        pred = logits[train_examples, task_index]
        losses += -torch.sum(functional.logsigmoid(pred) * train_labels
                             + (functional.logsigmoid(pred) - pred) * (1 - train_labels))
    return losses / num_examples


def test_the_heads_kinds_are_the_targets() -> None:
    assert heads.HEAD_KINDS == targets.HEAD_KINDS


@pytest.mark.parametrize(("kind", "classes", "outputs"), [("binary", 2, 1), ("multiclass", 3, 3), ("ordinal", 5, 4)])
def test_head_outputs(kind: str, classes: int, outputs: int) -> None:
    assert head_outputs(kind, classes) == outputs


def test_bad_heads_and_logits_are_refused() -> None:
    with pytest.raises(ArgumentError, match=r"^num_classes=2: ordinal heads need 3 or more"):
        head_outputs("ordinal", 2)
    with pytest.raises(ArgumentError, match=r"^logits: 7 outputs, but the heads take 8 \(1 \+ 3 \+ 4\)"):
        split_head_logits(torch.zeros(2, 7), [1, 3, 4])
    blocks = split_head_logits(torch.arange(16.0).reshape(2, 8), [1, 3, 4])
    assert [block.shape for block in blocks] == [(2, 1), (2, 3), (2, 4)] and blocks[2][0].tolist() == [4, 5, 6, 7]


def test_ordinal_probabilities_are_monotone_and_the_level_is_their_median() -> None:
    logits = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) * 3
    cumulative = head_probabilities("ordinal", logits)
    assert torch.equal(cumulative, cumulative_probabilities(logits))
    assert (cumulative[:, 1:] <= cumulative[:, :-1]).all() and ((0 <= cumulative) & (cumulative <= 1)).all()
    levels = level_probabilities(cumulative)
    assert levels.shape == (500, 5) and (levels >= 0).all()
    torch.testing.assert_close(levels.sum(dim=1), torch.ones(500, dtype=levels.dtype))
    predicted = predicted_classes("ordinal", cumulative)
    median = (levels.cumsum(dim=1) >= 0.5).float().argmax(dim=1)  # the first level whose CDF reaches 1/2
    assert torch.equal(predicted, median)
    assert predicted_classes("ordinal", torch.tensor([[0.9, 0.6, 0.2, 0.1]])).item() == 2  # level 3


def test_binary_and_multiclass_probabilities() -> None:
    logits = torch.tensor([[0.0], [2.0]])
    torch.testing.assert_close(head_probabilities("binary", logits), torch.sigmoid(logits[:, 0]))
    assert predicted_classes("binary", torch.tensor([0.5, 0.51])).tolist() == [0, 1]  # strictly above
    multi = head_probabilities("multiclass", torch.tensor([[1.0, 3.0, 2.0]]))
    torch.testing.assert_close(multi.sum(dim=1), torch.ones(1))
    assert predicted_classes("multiclass", multi).tolist() == [1]


def test_corn_loss_is_the_reference_implementations() -> None:
    generator = torch.Generator().manual_seed(1)
    logits, classes = torch.randn(40, 4, generator=generator), torch.randint(0, 5, (40,), generator=generator)
    torch.testing.assert_close(CornLoss()(logits, classes), reference_corn_loss(logits, classes, 5))
    only_lowest = torch.zeros(6, dtype=torch.long)  # the lowest level takes part in the first task only
    torch.testing.assert_close(CornLoss()(logits[:6], only_lowest), reference_corn_loss(logits[:6], only_lowest, 5))
    empty = CornLoss()(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0


def test_corn_learns_an_ordinal_scale() -> None:
    """A linear CORN head on one feature that the level grows with: its predicted levels agree (QWK > 0.8)."""
    generator = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 5, (200,), generator=generator)
    feature = levels.float()[:, None] + 0.4 * torch.randn(200, 1, generator=generator)
    torch.manual_seed(0)  # the layer's initial weights
    layer = nn.Linear(1, 4)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(60):
        optimizer.zero_grad()
        CornLoss()(layer(feature), levels).backward()
        optimizer.step()
    predicted = predicted_classes("ordinal", cumulative_probabilities(layer(feature).detach()))
    assert cohen_kappa_score(levels.numpy(), predicted.numpy(), weights="quadratic") > 0.8


def test_head_losses() -> None:
    weights = torch.tensor([1.0, 2.0, 0.5])
    logits, classes = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
    torch.testing.assert_close(head_loss("multiclass", weights)(logits, classes),
                               functional.cross_entropy(logits, classes, weight=weights))
    assert isinstance(head_loss("binary"), nn.BCEWithLogitsLoss) and isinstance(head_loss("ordinal"), CornLoss)
    with pytest.raises(ValueError, match="class_weights weigh a multiclass head's classes"):
        head_loss("ordinal", weights)


def test_auto_class_weights_are_balanced_over_the_labelled_training_rows() -> None:
    texture = [0, 0, 0, 0, 1, 2, 2, MASKED, MASKED]
    train = pd.DataFrame({"label": [0, 1] * 4 + [0], "texture_label": texture, "spiculation_label": range(9)})
    auto = TargetOptions(HeadSpec(), (HeadSpec(name="texture", kind="multiclass", column="texture",
                                               rule=CLASS_MAPS["texture3"], class_weights="auto"), SPICULATION))
    weights = target_class_weights(auto, train)
    labelled = np.array(texture[:7])
    np.testing.assert_allclose(weights["texture"].numpy(),
                               compute_class_weight("balanced", classes=np.arange(3), y=labelled), rtol=1e-6)
    assert weights["label"] is None and weights["spiculation"] is None
    given = TargetOptions(HeadSpec(kind="multiclass", column="texture", rule=CLASS_MAPS["texture3"],
                                   class_weights=[1, 2, 3]))
    assert target_class_weights(given, train)["label"].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match=r"^target\.auxiliary\.texture\.class_weights=auto: class\(es\) part_solid "
                                          r"of 'texture' have no sample in the training split"):
        target_class_weights(auto, train.assign(texture_label=[0, 0, 2, 2, MASKED, 2, 0, 0, 0]))


def test_the_multitask_loss_is_the_weighted_sum_over_labelled_samples() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 8, generator=generator, requires_grad=True)
    targets_ = torch.tensor([[1, 0, 4], [0, MASKED, 0], [1, 2, MASKED], [0, 1, 2], [1, MASKED, 3], [0, 2, 1]])
    loss = target_loss(LIDC)
    assert isinstance(loss, MultitaskLoss)
    binary, texture, spiculation = split_head_logits(logits, [1, 3, 4])
    texture_rows, spiculation_rows = targets_[:, 1] != MASKED, targets_[:, 2] != MASKED
    expected = (functional.binary_cross_entropy_with_logits(binary[:, 0], targets_[:, 0].float())
                + 0.5 * functional.cross_entropy(texture[texture_rows], targets_[texture_rows, 1])
                + CornLoss()(spiculation[spiculation_rows], targets_[spiculation_rows, 2]))
    total = loss(logits, targets_)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert logits.grad is not None
    assert (logits.grad[~texture_rows, 1:4] == 0).all()  # masked: no contribution
    assert (logits.grad[texture_rows, 1:4] != 0).any()


def test_a_head_without_labels_in_the_batch_contributes_zero_not_nan() -> None:
    logits = torch.randn(3, 8, requires_grad=True)
    targets_ = torch.tensor([[1, MASKED, MASKED], [0, MASKED, MASKED], [1, MASKED, MASKED]])
    loss = target_loss(LIDC)
    parts = loss.head_losses(logits, targets_)
    assert parts["texture"].item() == 0.0 and parts["spiculation"].item() == 0.0
    total = loss.combine(parts)
    torch.testing.assert_close(total, functional.binary_cross_entropy_with_logits(logits[:, 0], torch.tensor(
        [1.0, 0.0, 1.0])))
    total.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, 1:] == 0).all()


def test_the_primary_keeps_model_loss_and_a_single_head_its_own_loss() -> None:
    focal = BinaryFocalLoss(gamma=2.0)
    assert target_loss(TargetOptions(), primary_loss=focal) is focal
    assert target_loss(LIDC, primary_loss=focal).losses[0] is focal
    assert isinstance(target_loss(TargetOptions(HeadSpec(kind="ordinal", column="malignancy",
                                                         rule=CLASS_MAPS["rating"]))), CornLoss)
    with pytest.raises(ValueError, match="primary_loss is a binary head's loss; the primary head is multiclass"):
        target_loss(TargetOptions(HeadSpec(kind="multiclass", column="texture", rule=CLASS_MAPS["texture3"])),
                    primary_loss=focal)
