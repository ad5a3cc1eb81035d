"""NoduleClassifier with real configs: pretrained round trip, fine-tuning controls, loss weighting, presets."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import hydra
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from lungexp.config.check import check
from lungexp.models import PretrainedWeightsError
from lungexp.training.finetuning import BackboneFreeze
from lungexp.training.pipeline import build, train
from tests.helpers.checkpoints import medicalnet_key_shapes, random_tensors, save_medicalnet_checkpoint

TINY_RESNET = ("model.net.depth=10", "model.net.widths=[4,8,8,8]")
ADAMW_DEFAULT_LR = inspect.signature(torch.optim.AdamW).parameters["lr"].default


def backbone_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head.")}


def test_lightning_checkpoint_round_trip_reproduces_the_backbone(make_config) -> None:
    """Train tiny -> save -> `model.pretrained.path=that.ckpt` loads exactly those backbone weights."""
    result = train(check(make_config("trainer.max_epochs=1", "~logger", "callbacks.lr_monitor=null", model="resnet3d"), "run"))
    checkpoint = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    saved = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()
             if k.startswith("net.") and not k.startswith("net.head.")}

    sha256 = hashlib.sha256(Path(result.best_checkpoint).read_bytes()).hexdigest()
    cfg = make_config(f"model.pretrained.path={result.best_checkpoint}", "model.pretrained.format=lightning",
                      f"model.pretrained.sha256={sha256}", model="resnet3d")
    loaded = hydra.utils.instantiate(cfg.model, _convert_="partial")
    assert loaded.pretrained_report.loaded == len(saved) > 0
    assert loaded.pretrained_report.sha256 == sha256
    state = backbone_state(loaded.net)
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)

    scratch = hydra.utils.instantiate(make_config(model="resnet3d").model, _convert_="partial")
    image = torch.rand(2, 1, 16, 16, 16)
    scratch.eval(), loaded.eval()
    assert not torch.allclose(scratch.net(image), loaded.net(image))


def test_checkpoint_of_another_architecture_is_refused_with_a_listing(make_config, tmp_path: Path) -> None:
    other = hydra.utils.instantiate(make_config(model="cnn3d").model.net)
    path = tmp_path / "cnn.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in other.state_dict().items()}}, path)
    cfg = make_config(f"model.pretrained.path={path}", model="resnet3d")
    with pytest.raises(Exception, match="missing") as error:
        hydra.utils.instantiate(cfg.model, _convert_="partial")
    assert isinstance(error.value.__cause__ or error.value, PretrainedWeightsError)
    assert str(path) in str(error.value)


def test_frozen_batchnorm_keeps_running_statistics(make_config) -> None:
    cfg = make_config("trainer.max_epochs=1", "~logger", "callbacks.lr_monitor=null", "model.finetune.freeze_bn=true",
                      "test_after_fit=false", model="resnet3d")
    datamodule, model, trainer = build(check(cfg, "run"))
    before = {k: v.clone() for k, v in model.net.state_dict().items() if "running_" in k}
    trainer.fit(model, datamodule=datamodule)
    after = model.net.state_dict()
    assert before and all(torch.equal(before[k], after[k]) for k in before)


def test_unfrozen_batchnorm_statistics_do_change(make_config) -> None:
    cfg = make_config("trainer.max_epochs=1", "~logger", "callbacks.lr_monitor=null", "test_after_fit=false",
                      model="resnet3d")
    datamodule, model, trainer = build(check(cfg, "run"))
    before = {k: v.clone() for k, v in model.net.state_dict().items() if "running_mean" in k}
    trainer.fit(model, datamodule=datamodule)
    assert any(not torch.equal(before[k], model.net.state_dict()[k]) for k in before)
    # The epoch's progress bar: the training loss and val/auroc; every validation metric is logged.
    assert {name.removesuffix("_epoch").removesuffix("_step") for name in trainer.progress_bar_metrics} == {
        "train/loss", "val/auroc"}
    assert {"val/auroc", "val/average_precision", "val/sensitivity"} <= set(trainer.callback_metrics)


def test_head_learning_rate_multiplier_and_backbone_freezing_from_config(make_config) -> None:
    cfg = make_config("model.finetune.head_lr_mult=10", "model.finetune.freeze_backbone_epochs=2", model="resnet3d")
    _, model, trainer = build(check(cfg, "run"))
    assert any(isinstance(c, BackboneFreeze) and c.unfreeze_at_epoch == 2 for c in trainer.callbacks)
    groups = model.configure_optimizers()["optimizer"].param_groups
    head = {id(parameter) for parameter in model.net.head.parameters()}
    # Each group told apart by the parameters it holds, not by its name: swapped rates fail.
    rates = {"head" if {id(p) for p in group["params"]} == head else "backbone": group["lr"] for group in groups}
    assert rates == pytest.approx({"backbone": 1e-3, "head": 1e-2})


@pytest.mark.parametrize(("lr_override", "lr"), [("model.optimizer.lr=0.05", 0.05),
                                                 ("~model.optimizer.lr", ADAMW_DEFAULT_LR)])
def test_learning_rate_is_the_configured_one_or_the_optimizer_default(make_config, lr_override: str,
                                                                      lr: float) -> None:
    cfg = make_config(lr_override, "model.finetune.head_lr_mult=10")
    model = hydra.utils.instantiate(cfg.model, _convert_="partial")
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx({"backbone": lr, "head": 10 * lr})


def test_pos_weight_auto_is_the_class_ratio_of_the_training_split(make_config) -> None:
    cfg = make_config("model.pos_weight=auto", "trainer.max_epochs=1", "~logger", "callbacks.lr_monitor=null",
                      "test_after_fit=false", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
    datamodule, model, trainer = build(check(cfg, "run"))
    trainer.fit(model, datamodule=datamodule)
    negatives, positives = datamodule.train_class_counts
    assert model.criterion.pos_weight.item() == pytest.approx(negatives / positives)
    assert model.criterion.pos_weight.item() > 1


@pytest.mark.slow
def test_own_pretraining_presets_chain(make_config, tmp_path: Path) -> None:
    """experiment=pretrain_candidates -> finetune_malignancy (loads its checkpoint) -> scratch_malignancy."""
    shrink = ("trainer.max_epochs=1", "trainer.precision=32-true", *TINY_RESNET)
    pretrain = train(check(make_config("experiment=pretrain_candidates", *shrink, model="resnet3d"), "run"))
    best = tmp_path / "checkpoints" / "pretrain_candidates" / "best.ckpt"
    assert Path(pretrain.best_checkpoint) == best and best.is_file()

    finetune = train(check(make_config("experiment=finetune_malignancy", *shrink, "trainer.max_epochs=2",
                                 "model.finetune.freeze_backbone_epochs=1", model="resnet3d"), "run"))
    scratch = train(check(make_config("experiment=scratch_malignancy", *shrink, "trainer.max_epochs=2", model="resnet3d"), "run"))
    client = MlflowClient(tracking_uri=make_config().paths.mlflow_uri)
    finetuned_params = client.get_run(finetune.mlflow_run_id).data.params
    assert finetuned_params["pretrained.path"] == str(best)
    assert int(finetuned_params["pretrained.loaded_tensors"]) > 0
    assert "pretrained.path" not in client.get_run(scratch.mlflow_run_id).data.params
    for run in (finetune, scratch):
        name = client.get_run(run.mlflow_run_id).data.tags["mlflow.runName"]
        assert name.split()[0] in ("finetune_malignancy", "scratch_malignancy")  # the preset, then overrides
        assert "test/auroc" in run.metrics


@pytest.mark.slow
def test_run_from_a_medicalnet_file_as_a_user_would(make_config, tmp_path: Path) -> None:
    """`model=resnet3d model.pretrained.path=resnet_10.pth model.pretrained.format=medicalnet ...`."""
    tensors = random_tensors(medicalnet_key_shapes(10, "B"), seed=10)
    path = save_medicalnet_checkpoint(tmp_path / "resnet_10.pth", tensors)
    cfg = make_config(f"model.pretrained.path={path}", "model.pretrained.format=medicalnet", "model.net.depth=10",
                      "model.net.shortcut_type=B", "model.net.dilated=true", "model.net.widths=[64,128,256,512]",
                      "trainer.max_epochs=1",
                      "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                      model="resnet3d")
    result = train(check(cfg, "run"))
    params = MlflowClient(tracking_uri=cfg.paths.mlflow_uri).get_run(result.mlflow_run_id).data.params
    backbone_tensors = sum(not k.startswith("conv_seg.") for k in tensors)
    assert int(params["pretrained.loaded_tensors"]) == backbone_tensors
    assert params["pretrained.format"] == "medicalnet"
    assert int(params["model_info.params"]) > 14_000_000  # the real MedicalNet ResNet-10 backbone
