"""Fine-tuning a pretrained backbone: per-part learning rates, frozen BatchNorm, frozen-then-unfrozen backbone.

All helpers rely on the network contract of :mod:`lungexp.models`: the classifier is ``net.head`` and
every other parameter belongs to the backbone.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

BACKBONE_GROUP = "backbone"
HEAD_GROUP = "head"


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    """The network's top-level children except ``head``."""
    return [module for name, module in net.named_children() if name != "head"]


def parameter_groups(net: nn.Module, lr: float, head_lr_mult: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: backbone at ``lr``, head at ``lr * head_lr_mult``.

    A freshly initialised head on a pretrained backbone usually wants a larger step than the backbone.
    Only ``requires_grad`` parameters are included (frozen ones would otherwise receive weight decay)
    and empty groups are omitted. Each group carries ``name`` (shown by Lightning's LearningRateMonitor)
    and ``lr_mult``, which :class:`BackboneFreeze` uses to recover the scheduled base learning rate.
    """
    head_ids = {id(parameter) for parameter in net.get_submodule("head").parameters()}
    trainable = [parameter for parameter in net.parameters() if parameter.requires_grad]
    groups = [
        {
            "name": BACKBONE_GROUP,
            "params": [p for p in trainable if id(p) not in head_ids],
            "lr": lr,
            "lr_mult": 1.0,
        },
        {
            "name": HEAD_GROUP,
            "params": [p for p in trainable if id(p) in head_ids],
            "lr": lr * head_lr_mult,
            "lr_mult": head_lr_mult,
        },
    ]
    return [group for group in groups if group["params"]]


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep the backbone's BatchNorm layers at their pretrained statistics and affine parameters.

    Puts every BatchNorm outside ``head`` in eval mode (running statistics no longer update and
    normalisation uses them) and sets its weight/bias ``requires_grad=False``. Any ``.train()`` call
    switches BN back to training mode, so re-apply it at the start of every training epoch: call it from
    ``LightningModule.on_train_epoch_start`` (pytorch_lightning 2.x never calls ``.train()`` itself, it
    restores each submodule's mode after validation, but user code or other hooks may). That hook runs
    after callbacks' ``on_train_epoch_start``, so it also re-freezes BN after :class:`BackboneFreeze`
    unfreezes the backbone (pass ``train_bn=False`` there so BN is not added to the optimizer). Frozen
    affine parameters already in an optimizer get no gradient and so stay unchanged.
    """
    for name, layer in module.named_modules():
        if isinstance(layer, _BatchNorm) and not name.startswith("head"):
            layer.eval()
            for parameter in layer.parameters():
                parameter.requires_grad = False


class BackboneFreeze(BaseFinetuning):
    """Train only ``pl_module.net.head`` until epoch ``unfreeze_at_epoch``, then the whole network.

    Warming up the new head first keeps its large random gradients from wrecking pretrained features.
    While frozen, the entire backbone is fixed, BatchNorm included (parameters *and* running statistics:
    Lightning's freezing sets ``track_running_stats=False``, so BN normalises with batch statistics and
    leaves its buffers alone). The LightningModule's optimizer must be built from
    :func:`parameter_groups` (or otherwise only from ``requires_grad`` parameters), so while frozen it
    holds just the head. At ``unfreeze_at_epoch`` the backbone is unfrozen and appended as a new
    parameter group at the *current* base learning rate (head group lr / its ``lr_mult``) times
    ``backbone_lr_mult`` and named ``backbone``. The project's default scheduler, CosineAnnealingLR,
    updates every group recursively from its current lr, so it keeps annealing the appended group in
    step with the head; schedulers computed from their stored ``base_lrs`` may not.

    Args:
        unfreeze_at_epoch: first epoch (0-based) in which the backbone trains; >= 1.
        train_bn: whether the backbone's BatchNorm parameters join the optimizer at unfreezing. Pass
            ``False`` together with :func:`freeze_batchnorm` to keep BN at its pretrained state all run.
        backbone_lr_mult: backbone learning rate relative to the base learning rate after unfreezing.
    """

    def __init__(self, unfreeze_at_epoch: int, train_bn: bool = True, backbone_lr_mult: float = 1.0) -> None:
        super().__init__()
        if unfreeze_at_epoch < 1:
            raise ValueError(
                f"unfreeze_at_epoch must be >= 1 (0 would never freeze), got {unfreeze_at_epoch}"
            )
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.train_bn = train_bn
        self.backbone_lr_mult = backbone_lr_mult

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(backbone_modules(pl_module.get_submodule("net")), train_bn=False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        # ">=" and the frozen check also cover resuming from a checkpoint written after the unfreeze epoch:
        # setup() froze the backbone again and the restored optimizer already holds its group.
        if epoch < self.unfreeze_at_epoch or not self._backbone_frozen(pl_module.get_submodule("net")):
            return
        groups_before = len(optimizer.param_groups)
        self.unfreeze_and_add_param_group(
            modules=backbone_modules(pl_module.get_submodule("net")),
            optimizer=optimizer,
            lr=self._base_lr(optimizer) * self.backbone_lr_mult,
            train_bn=self.train_bn,
        )
        if len(optimizer.param_groups) > groups_before:  # named like parameter_groups' (LearningRateMonitor)
            optimizer.param_groups[-1].update(name=BACKBONE_GROUP, lr_mult=self.backbone_lr_mult)

    @staticmethod
    def _backbone_frozen(net: nn.Module) -> bool:
        """Whether non-BatchNorm backbone weights are frozen (BN may be frozen on purpose: ``train_bn``,
        :func:`freeze_batchnorm`)."""
        layers = BaseFinetuning.flatten_modules(backbone_modules(net))
        return any(
            not parameter.requires_grad
            for layer in layers
            if not isinstance(layer, _BatchNorm)
            for parameter in layer.parameters(recurse=False)
        )

    @staticmethod
    def _base_lr(optimizer: Optimizer) -> float:
        """The scheduled base learning rate, read off the head group (the one that exists while frozen)."""
        head = next(
            (g for g in optimizer.param_groups if g.get("name") == HEAD_GROUP), optimizer.param_groups[0]
        )
        return head["lr"] / head.get("lr_mult", 1.0)
