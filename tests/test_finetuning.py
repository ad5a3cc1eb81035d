"""Fine-tuning helpers: parameter groups, frozen BatchNorm, and the frozen-then-unfrozen backbone callback,
exercised with a real pytorch_lightning Trainer on tiny random data."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lungexp.models import ResNet3D
from lungexp.training.finetuning import BackboneFreeze, freeze_batchnorm, parameter_groups

LR = 1e-2


def _tiny_net() -> ResNet3D:
    torch.manual_seed(0)
    return ResNet3D(10, widths=(4, 8, 8, 8), dropout=0.0)


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, 1, 16, 16, 16, generator=generator)
    targets = torch.tensor([0.0, 1.0] * 4)
    return DataLoader(TensorDataset(inputs, targets), batch_size=4)


class TinyClassifier(pl.LightningModule):
    """The parts of the project's LightningModule these helpers rely on: ``net``, optimizer from
    :func:`parameter_groups`, and :func:`freeze_batchnorm` re-applied at every training epoch start."""

    def __init__(self, net: nn.Module, head_lr_mult: float = 1.0, freeze_bn: bool = False) -> None:
        super().__init__()
        self.freeze_bn = freeze_bn
        self.head_lr_mult = head_lr_mult
        self.net = net
        self.loss = nn.BCEWithLogitsLoss()

    def on_train_epoch_start(self) -> None:
        if self.freeze_bn:
            freeze_batchnorm(self.net)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return self.loss(self.net(inputs).squeeze(1), targets)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        self.log("val_loss", self.loss(self.net(inputs).squeeze(1), targets))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameter_groups(self.net, LR, self.head_lr_mult))


class StateRecorder(pl.Callback):
    """Snapshots of the network's state dict before training and after every epoch."""

    def __init__(self) -> None:
        self.snapshots: dict[str | int, dict[str, torch.Tensor]] = {}

    def _record(self, key: str | int, pl_module: pl.LightningModule) -> None:
        self.snapshots[key] = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record("start", pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer.current_epoch, pl_module)


def _fit(module: TinyClassifier, epochs: int, *callbacks: pl.Callback) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    return trainer


def _parameter_names(net: nn.Module, head: bool) -> list[str]:
    return [name for name, _ in net.named_parameters() if name.startswith("head.") == head]


def _is_bn(net: nn.Module, key: str) -> bool:
    return isinstance(net.get_submodule(key.rsplit(".", 1)[0]), nn.BatchNorm3d)


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], keys: list[str]) -> set[str]:
    return {key for key in keys if not torch.equal(before[key], after[key])}


def test_parameter_groups_split_head_and_backbone() -> None:
    net = _tiny_net()
    groups = parameter_groups(net, lr=1e-3, head_lr_mult=10.0)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 1e-3), ("head", pytest.approx(1e-2))]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in net.head.parameters()]
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))


def test_parameter_groups_skip_frozen_parameters_and_empty_groups() -> None:
    net = _tiny_net()
    for name, parameter in net.named_parameters():
        parameter.requires_grad = name.startswith("head.") or name == "layer4.0.conv2.weight"
    groups = parameter_groups(net, lr=1e-3, head_lr_mult=1.0)
    assert [len(g["params"]) for g in groups] == [1, 2]
    for parameter in net.layer4.parameters():
        parameter.requires_grad = False
    assert [g["name"] for g in parameter_groups(net, lr=1e-3, head_lr_mult=1.0)] == ["head"]


def test_freeze_batchnorm_fixes_backbone_batchnorm_only() -> None:
    net = _tiny_net().train()
    freeze_batchnorm(net)
    for name, module in net.named_modules():
        if isinstance(module, nn.BatchNorm3d):
            assert not module.training, name
            assert not any(p.requires_grad for p in module.parameters()), name
        elif isinstance(module, nn.Conv3d):
            assert module.training and module.weight.requires_grad, name
    assert all(p.requires_grad for p in net.head.parameters())


def test_backbone_is_frozen_until_the_unfreeze_epoch() -> None:
    net = _tiny_net()
    recorder = StateRecorder()
    trainer = _fit(TinyClassifier(net, head_lr_mult=5.0), 3, BackboneFreeze(unfreeze_at_epoch=2), recorder)
    snapshots = recorder.snapshots
    backbone_state = [key for key in snapshots["start"] if not key.startswith("head.")]
    backbone, head = _parameter_names(net, head=False), _parameter_names(net, head=True)

    # Epochs 0-1: the head learns; no backbone tensor moves, BN parameters and running statistics included.
    assert _changed(snapshots["start"], snapshots[0], head) == set(head)
    assert not _changed(snapshots["start"], snapshots[1], backbone_state)
    # Epoch 2: every backbone parameter trains.
    assert _changed(snapshots[1], snapshots[2], backbone) == set(backbone)
    assert _changed(snapshots[1], snapshots[2], head) == set(head)

    optimizer = trainer.optimizers[0]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in net.parameters()}
    assert all(p.requires_grad for p in net.parameters())
    head_group, backbone_group = optimizer.param_groups
    assert head_group["name"] == "head" and head_group["lr"] == pytest.approx(5 * LR)
    assert backbone_group["name"] == "backbone"
    assert backbone_group["lr"] == pytest.approx(LR)  # the base lr, not the head's boosted one


class CosineClassifier(TinyClassifier):
    """With the project's default scheduler, which must keep driving the group appended at unfreezing."""

    def configure_optimizers(self) -> dict:
        optimizer = super().configure_optimizers()
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


class LearningRateRecorder(pl.Callback):
    """Learning rate of each named group in effect during each epoch (placed after BackboneFreeze)."""

    def __init__(self) -> None:
        self.lrs: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lrs.append({group["name"]: group["lr"] for group in trainer.optimizers[0].param_groups})


def test_unfrozen_backbone_follows_the_cosine_schedule() -> None:
    recorder = LearningRateRecorder()
    _fit(CosineClassifier(_tiny_net(), head_lr_mult=5.0), 4, BackboneFreeze(unfreeze_at_epoch=1), recorder)
    assert [set(lrs) for lrs in recorder.lrs] == [{"head"}] + [{"head", "backbone"}] * 3
    for epoch, lrs in enumerate(recorder.lrs[1:], start=1):
        cosine = (1 + math.cos(math.pi * epoch / 4)) / 2
        assert lrs["head"] == pytest.approx(5 * LR * cosine)
        assert lrs["backbone"] == pytest.approx(LR * cosine)


def test_backbone_lr_multiplier_and_frozen_batchnorm_after_unfreezing() -> None:
    net = _tiny_net()
    recorder = StateRecorder()
    trainer = _fit(
        TinyClassifier(net, freeze_bn=True),
        2,
        BackboneFreeze(unfreeze_at_epoch=1, train_bn=False, backbone_lr_mult=0.5),
        recorder,
    )
    snapshots = recorder.snapshots
    backbone = _parameter_names(net, head=False)
    batchnorm_state = [key for key in snapshots["start"] if _is_bn(net, key)]
    non_bn_backbone = [key for key in backbone if not _is_bn(net, key)]

    assert not _changed(snapshots["start"], snapshots[0], backbone)
    assert _changed(snapshots[0], snapshots[1], non_bn_backbone) == set(non_bn_backbone)
    assert not _changed(snapshots["start"], snapshots[1], batchnorm_state)
    assert trainer.optimizers[0].param_groups[-1]["lr"] == pytest.approx(0.5 * LR)


def test_freeze_batchnorm_keeps_running_statistics_through_training_and_validation() -> None:
    net = _tiny_net()
    recorder = StateRecorder()
    _fit(TinyClassifier(net, freeze_bn=True), 2, recorder)
    before, after = recorder.snapshots["start"], recorder.snapshots[1]
    batchnorm_state = [key for key in before if _is_bn(net, key)]
    convolutions = [key for key in before if key.endswith("conv1.weight") or key.endswith("conv2.weight")]

    assert any(key.endswith("running_mean") for key in batchnorm_state)
    assert not _changed(before, after, batchnorm_state)
    assert _changed(before, after, convolutions) == set(convolutions)


def test_unfreeze_epoch_must_leave_something_frozen() -> None:
    with pytest.raises(ValueError, match="unfreeze_at_epoch"):
        BackboneFreeze(unfreeze_at_epoch=0)
