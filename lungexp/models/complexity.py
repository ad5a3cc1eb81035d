"""Model size and compute, logged with every run so architectures are compared at equal cost."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(net: nn.Module) -> int:
    """All parameters, trainable or frozen (freezing for fine-tuning must not change the reported size)."""
    return sum(parameter.numel() for parameter in net.parameters())


def count_flops(net: nn.Module, input_shape: tuple[int, ...] | None = (1, 1, 32, 32, 32), covariates: int = 0) -> int:
    """Forward FLOPs (PyTorch's count: 2 per multiply-accumulate) for one input of ``input_shape``, and of
    ``covariates`` covariates for a model that takes them (:mod:`lungexp.models.fusion`; ``input_shape=None``: a
    model of the covariates alone, :class:`~lungexp.models.tabular.TabularNet`).

    Runs on a deep copy in eval mode without grad, so the caller's network (its BN statistics, its
    train/eval mode, its autograd graph) is untouched.
    """
    probe = copy.deepcopy(net).eval()
    parameter = next(probe.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    inputs = [] if input_shape is None else [torch.zeros(input_shape, device=device)]
    if covariates:
        inputs.append(torch.zeros(1 if input_shape is None else input_shape[0], covariates, device=device))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        probe(*inputs)
    return int(counter.get_total_flops())


def model_summary(net: nn.Module, in_channels: int | None, patch: int = 32, covariates: int = 0
                  ) -> dict[str, int | float]:
    """``{"params": ..., "flops_<patch>": ...}`` for MLflow, FLOPs for one (in_channels, patch³) sample (with its
    ``covariates``, for a model that takes them); ``in_channels=None``: a model of the covariates alone, ``flops``."""
    if in_channels is None:
        return {"params": count_parameters(net), "flops": count_flops(net, None, covariates)}
    return {
        "params": count_parameters(net),
        f"flops_{patch}": count_flops(net, (1, in_channels, patch, patch, patch), covariates),
    }
