"""Losses: one-logit binary classification under heavy class imbalance, and the heads of a ``target``.

Every binary loss here takes ``pos_weight`` like ``torch.nn.BCEWithLogitsLoss``, so the LightningModule
can set it (``model.pos_weight``) whichever loss the config picks. A target's heads
(:mod:`lungexp.data.labels.targets`, :mod:`lungexp.models.heads`) are trained with :func:`head_loss` each:
BCE (binary), cross-entropy with optional class weights (multiclass, :func:`target_class_weights`), CORN
(ordinal, :class:`CornLoss`); a multitask target with :class:`MultitaskLoss`, their weighted sum over the
samples each head has a label for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional

from lungexp.data.labels.class_maps import MASKED
from lungexp.data.labels.targets import HeadSpec, TargetOptions
from lungexp.models.heads import head_outputs, split_head_logits
from lungexp.utils.errors import ConfigError, look_up_option

log = logging.getLogger(__name__)


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


class CornLoss(nn.Module):
    """CORN's loss (Shi et al. 2023, https://arxiv.org/abs/2111.08851) on the K − 1 logits of an ordinal head.

    Logit k (0-based) is trained as the binary "level > k" on the samples with level >= k only (class indices
    0 … K − 1), so it learns the conditional P(level > k | level >= k) that
    :func:`~lungexp.models.heads.cumulative_probabilities` multiplies up. The loss is the binary cross-entropy
    averaged over every (sample, logit) pair used; a batch with no pair (empty) gives 0.
    """

    def forward(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        ranks = torch.arange(logits.shape[-1], device=logits.device)
        used = classes[:, None] >= ranks  # sample i takes part in task k when its level is at least k
        above = (classes[:, None] > ranks).to(logits.dtype)
        losses = functional.binary_cross_entropy_with_logits(logits, above, reduction="none")
        return (losses * used).sum() / used.sum().clamp_min(1)


def head_loss(kind: str, class_weights: torch.Tensor | None = None) -> nn.Module:
    """The loss of a head of ``kind``: BCE on its logit, cross-entropy (weighted by ``class_weights``, one per
    class) on its K logits, or :class:`CornLoss` on its K − 1 logits."""
    look_up_option("kind", kind, ("binary", "multiclass", "ordinal"))
    if class_weights is not None and kind != "multiclass":
        raise ValueError(f"class_weights weigh a multiclass head's classes, not a {kind} head's")
    if kind == "binary":
        return nn.BCEWithLogitsLoss()
    if kind == "multiclass":
        return nn.CrossEntropyLoss(weight=class_weights)
    return CornLoss()


def balanced_class_weights(counts: Sequence[int] | np.ndarray) -> torch.Tensor:
    """``N / (K n_c)`` per class c (scikit-learn's "balanced"): each class weighs as much in the loss as it
    would in a balanced training set; every count must be positive."""
    counts_array = np.asarray(counts, dtype=np.float64)
    return torch.tensor(counts_array.sum() / (len(counts_array) * counts_array), dtype=torch.float32)


def target_class_weights(target: TargetOptions, train: pd.DataFrame) -> dict[str, torch.Tensor | None]:
    """Each head's cross-entropy class weights (by head name): None, the numbers given, or with
    ``class_weights=auto`` :func:`balanced_class_weights` of the classes in ``train`` (the training split's sample
    table, with each head's :attr:`~lungexp.data.labels.targets.HeadSpec.label_column`; masked rows not counted).

    A class without a training sample cannot be weighed (nor learnt): a :class:`ConfigError` naming the key."""
    weights: dict[str, torch.Tensor | None] = {}
    for head in target.heads:
        if head.class_weights is None or isinstance(head.class_weights, tuple):
            weights[head.name] = None if head.class_weights is None else torch.tensor(head.class_weights)
            continue
        classes = train[head.label_column].to_numpy()
        counts = np.bincount(classes[classes != MASKED], minlength=head.num_classes)
        empty = [name for name, count in zip(head.class_names, counts, strict=True) if count == 0]
        if empty:
            raise ConfigError(f"{target.config_key(head, 'class_weights')}=auto: class(es) {', '.join(empty)} of "
                              f"'{head.column}' have no sample in the training split, so they can neither be "
                              f"weighed nor learnt; merge them into others with {target.config_key(head, 'rule')} "
                              "(or drop their values), or split the data otherwise")
        balanced = weights[head.name] = balanced_class_weights(counts)
        log.info("%s=auto: %s", target.config_key(head, "class_weights"), ", ".join(
            f"{name} {weight:.2f} ({count} samples)" for name, weight, count in
            zip(head.class_names, balanced.tolist(), counts, strict=True)))
    return weights


class MultitaskLoss(nn.Module):
    """The weighted sum of the heads' losses, each over the samples it has a label for.

    Args:
        heads: the heads, in the order of the network's outputs.
        losses: each head's loss (:func:`head_loss`; a binary one takes float 0/1 targets, as
            ``BCEWithLogitsLoss`` and :class:`BinaryFocalLoss` do).

    ``forward(logits, targets)``: ``logits`` ``(B, sum of the heads' outputs)``, ``targets`` ``(B, heads)``
    class indices with :data:`~lungexp.data.labels.class_maps.MASKED` where a head has no label. A masked sample
    contributes nothing to its head's loss; a head without any label in the batch contributes 0 (never NaN).
    """

    def __init__(self, heads: Sequence[HeadSpec], losses: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(heads) != len(losses):
            raise ValueError(f"{len(heads)} heads but {len(losses)} losses")
        self.names = [head.name for head in heads]
        self.kinds = [head.kind for head in heads]
        self.weights = [head.weight for head in heads]
        self.outputs = [head_outputs(head.kind, head.num_classes) for head in heads]
        self.losses = nn.ModuleList(losses)

    def head_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each head's (unweighted) loss over its labelled samples, by head name."""
        parts = {}
        blocks = split_head_logits(logits, self.outputs)
        for index, (name, kind, loss, block) in enumerate(zip(self.names, self.kinds, self.losses, blocks,
                                                             strict=True)):
            classes = targets[:, index]
            labelled = classes != MASKED
            if not labelled.any():
                parts[name] = block.sum() * 0.0  # in the graph, so every output still gets a (zero) gradient
            elif kind == "binary":
                parts[name] = loss(block[labelled].reshape(-1), classes[labelled].to(block.dtype))
            else:
                parts[name] = loss(block[labelled], classes[labelled])
        return parts

    def combine(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of :meth:`head_losses` (to log the parts without computing them twice)."""
        return torch.stack([weight * parts[name] for name, weight in zip(self.names, self.weights, strict=True)]).sum()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.combine(self.head_losses(logits, targets))


def target_loss(target: TargetOptions, class_weights: Mapping[str, torch.Tensor | None] | None = None,
                primary_loss: nn.Module | None = None) -> nn.Module:
    """The loss of ``target``: its one head's (:func:`head_loss`), or a :class:`MultitaskLoss` of all of them.

    Args:
        target: the ``target`` options.
        class_weights: by head name (:func:`target_class_weights`); missing: none.
        primary_loss: the binary primary head's loss as ``model.loss`` builds it (BCE or focal, with
            ``model.pos_weight``); None: :func:`head_loss`'s.
    """
    if primary_loss is not None and target.primary.kind != "binary":
        raise ValueError(f"primary_loss is a binary head's loss; the primary head is {target.primary.kind}")
    weights = dict(class_weights or {})
    losses = [head_loss(head.kind, weights.get(head.name)) for head in target.heads]
    if primary_loss is not None:
        losses[0] = primary_loss
    return losses[0] if not target.auxiliary else MultitaskLoss(target.heads, losses)
