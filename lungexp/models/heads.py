"""What a network's outputs mean per head kind: how many logits a head takes and how they become probabilities.

Every network ends in one linear layer of ``num_classes`` outputs (:mod:`lungexp.models.layers`); a target
(``target.*``) sets that number to the sum of its heads' outputs and splits the logits by head, in order:

* ``binary``: 1 logit; P(positive) = sigmoid;
* ``multiclass``: K logits; class probabilities = softmax;
* ``ordinal``: K − 1 logits, CORN's (Shi et al. 2023, https://arxiv.org/abs/2111.08851): logit k is the
  conditional P(level > k | level >= k), so P(level >= k) for k = 2 … K is their cumulative product,
  non-increasing in k by construction. CORN rather than CORAL (Cao et al. 2020): it needs no weight-sharing
  output layer, so every network's plain linear head serves it unchanged, and it reports lower errors than
  CORAL in its paper; averaging members or flipped views (ensembles, TTA) keeps the cumulative probabilities
  monotone.

The predicted level of an ordinal head is 1 + the number of k with P(level >= k) > 0.5: the median of the
predicted distribution, the prediction with the least expected absolute error in levels (the ``mae`` the
ordinal metrics report), where the argmax of the level probabilities would be its mode. Levels are 1 … K;
class indices, as the labels hold them, 0 … K − 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lungexp.utils.errors import ArgumentError, look_up_option

HEAD_KINDS = ("binary", "multiclass", "ordinal")
ORDINAL_CUT = 0.5  # P(level >= k) above this counts level k as reached


def head_outputs(kind: str, num_classes: int) -> int:
    """The logits a head of ``kind`` over ``num_classes`` classes takes: 1, K or K − 1."""
    look_up_option("kind", kind, HEAD_KINDS, error=ArgumentError)
    if num_classes < (2 if kind == "binary" else 3) or (kind == "binary" and num_classes != 2):
        raise ArgumentError(f"num_classes={num_classes}: {kind} heads need "
                            f"{'exactly 2' if kind == 'binary' else '3 or more'} classes")
    return {"binary": 1, "multiclass": num_classes, "ordinal": num_classes - 1}[kind]


def split_head_logits(logits: torch.Tensor, outputs: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """``(B, sum(outputs))`` logits as one ``(B, outputs[h])`` block per head, in the heads' order."""
    if logits.shape[-1] != sum(outputs):
        raise ArgumentError(f"logits: {logits.shape[-1]} outputs, but the heads take {sum(outputs)} "
                            f"({' + '.join(map(str, outputs))}); set the network's num_classes to {sum(outputs)}")
    return tuple(torch.split(logits, list(outputs), dim=-1))


def head_probabilities(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """A head's probabilities from its ``(B, outputs)`` logits: binary ``(B,)`` P(positive), multiclass
    ``(B, K)`` P(class), ordinal ``(B, K − 1)`` P(level >= k) for k = 2 … K (:func:`cumulative_probabilities`)."""
    look_up_option("kind", kind, HEAD_KINDS, error=ArgumentError)
    if kind == "binary":
        return torch.sigmoid(logits.reshape(len(logits)))
    if kind == "multiclass":
        return torch.softmax(logits, dim=-1)
    return cumulative_probabilities(logits)


def target_probabilities(logits: torch.Tensor, kinds: Sequence[str], outputs: Sequence[int]) -> torch.Tensor:
    """``(B, sum(outputs))`` probabilities of the heads of ``kinds`` from their ``(B, sum(outputs))`` logits, each
    head's :func:`head_probabilities` in its own columns (a binary head's P(positive) in one): the columns of a
    predictions table, and what ensembles and flipped views average."""
    blocks = split_head_logits(logits, outputs)
    return torch.cat([head_probabilities(kind, block).reshape(len(block), -1)
                      for kind, block in zip(kinds, blocks, strict=True)], dim=-1)


def cumulative_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """CORN: P(level >= k) for k = 2 … K, the cumulative product of the conditional probabilities."""
    return torch.cumprod(torch.sigmoid(logits), dim=-1)


def level_probabilities(cumulative: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` P(level = k) from ``(B, K − 1)`` P(level >= k): differences of consecutive cumulative ones."""
    ones = torch.ones_like(cumulative[..., :1])
    bounded = torch.cat([ones, cumulative, torch.zeros_like(ones)], dim=-1)
    return (bounded[..., :-1] - bounded[..., 1:]).clamp_min(0)


def predicted_classes(kind: str, probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The class index (0 … K − 1) a head predicts from its :func:`head_probabilities`: binary
    ``probability > threshold``, multiclass the most probable class, ordinal the number of levels k >= 2 with
    P(level >= k) > 0.5 (level − 1, the median level)."""
    look_up_option("kind", kind, HEAD_KINDS, error=ArgumentError)
    if kind == "binary":
        return (probabilities > threshold).long()
    if kind == "multiclass":
        return probabilities.argmax(dim=-1)
    return (probabilities > ORDINAL_CUT).sum(dim=-1)
