"""Every option of every config group composes, and a fast_dev_run with it trains, validates and tests, and
says each thing once on the console."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import ConfigCompositionException
from mlflow import MlflowClient
from omegaconf import OmegaConf
from pytorch_lightning.accelerators import CUDAAccelerator, MPSAccelerator
from pytorch_lightning.utilities.model_summary import get_human_readable_count

from lungexp.config.check import check
from lungexp.models.complexity import count_flops
from lungexp.training.pipeline import LIGHTNING_TIP, lightning_log, lightning_noise_silenced, train
from lungexp.utils.errors import ConfigError
from tests.helpers.config import CONFIG_DIR, PROJECT_ROOT, TINY_NETS, compose_config


def options(group: str) -> list[str]:
    """Selectable options of a group: one file per option."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_model_option_has_a_tiny_variant() -> None:
    assert set(options("model")) == set(TINY_NETS)


def test_experiment_group_lists_the_presets() -> None:
    assert "demo" in options("experiment")


def test_help_lists_only_the_groups_a_user_chooses() -> None:
    """Not the parts every model and data option includes (conf/base_*.yaml, once the group `shared`)."""
    shown = subprocess.run([sys.executable, "-m", "lungexp.run", "--help"], cwd=PROJECT_ROOT, capture_output=True,
                           text=True, check=True, timeout=120).stdout
    groups = shown.split("== Config ==")[0]
    listed = {line.split(":")[0] for line in groups.splitlines() if ": " in line}
    assert {"data", "model", "experiment"} <= listed
    assert not {name for name in listed if "shared" in name or "base" in name}, listed
    assert shown.startswith("lungexp.run: one config, composed from the groups below.")


def test_help_of_a_checkpoint_command_says_what_it_does_and_lists_no_training_group() -> None:
    """predict takes its model and data from the checkpoint: Hydra's default help listed every group of conf/,
    which predict refuses."""
    shown = subprocess.run([sys.executable, "-m", "lungexp.predict", "--help"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, check=True, timeout=120).stdout
    assert shown.startswith("lungexp.predict: scores candidate points")
    assert "== Configuration groups ==" not in shown and "\nmodel: " not in shown and "candidates: null" in shown
    assert "make docs" in shown  # where every option is explained


def test_config_composes_fast_and_resolves(make_config) -> None:
    cfg = make_config("experiment=demo")
    assert cfg.task_name == "demo"
    assert cfg.data.in_channels == 1
    assert cfg.model.net.in_channels == 1
    assert cfg.logger.mlflow.tracking_uri.startswith("sqlite:///")


@pytest.mark.parametrize(("group", "option"), [("model", "not_a_model"), ("experiment", "dem"),
                                               ("hparams_search", "optun")])
def test_unknown_option_is_a_clear_error(make_config, group: str, option: str) -> None:
    """The groups that are off by default too: a misspelt experiment used to train the default config instead."""
    with pytest.raises(ConfigCompositionException, match=group) as error:
        make_config(f"{group}={option}")
    assert f"Could not find '{group}/{option}'" in str(error.value)


def test_missing_mandatory_value_is_named(tmp_path: Path) -> None:
    from lungexp.utils.dictconfig import check_required

    cfg = compose_config(["data=luna16", "model.pretrained.path=???"], tmp_path)
    assert "${data.root}" in OmegaConf.to_yaml(cfg.data)  # other keys interpolate the missing one
    with pytest.raises(ValueError, match=r"data\.root, model\.pretrained\.path; .* data\.root=/path"):
        check_required(cfg)


def _dev_run(cfg, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> str:
    """A fast_dev_run of ``cfg``: its test metrics, and a console that says each thing once; returns the console."""
    run = check(cfg, "run")
    lightning_log.addHandler(caplog.handler)  # Lightning's loggers may not propagate to pytest's
    try:
        result = train(run)
    finally:
        lightning_log.removeHandler(caplog.handler)
    assert result.metrics, "no metrics were logged"
    assert "test/auroc" in result.metrics
    # False positives per scan where the patches are candidate detections, not where each is a nodule's crop.
    assert ("test/at_threshold/fp_per_scan" in result.metrics) == (run.data.task == "candidates")
    printed = capsys.readouterr().out
    assert re.search(r"Total FLOPs: [1-9]", printed), printed  # the network's, not the 0 Lightning counts
    assert "Test metric" not in printed  # no table of Lightning's own before lungexp's summary
    assert "GPU available" in caplog.text and LIGHTNING_TIP not in caplog.text  # Lightning's lines, not its ads
    return printed


def test_the_trainer_does_not_restate_the_default_batch_limits(caplog: pytest.LogCaptureFixture) -> None:
    """conf/trainer/default.yaml spells out limit_*_batches=1.0 (all batches); Lightning says so for each, on every
    run. Its line for a count of one batch tells a count from a fraction, and stays."""
    import pytorch_lightning as pl

    lightning_log.addHandler(caplog.handler)
    try:
        with lightning_noise_silenced():
            pl.Trainer(limit_train_batches=1.0, limit_val_batches=1.0, limit_test_batches=1, logger=False,
                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    finally:
        lightning_log.removeHandler(caplog.handler)
    assert "was configured so 100%" not in caplog.text
    assert "`Trainer(limit_test_batches=1)` was configured so 1 batch will be used" in caplog.text


@pytest.mark.parametrize("option", options("model"))
def test_fast_dev_run_model(make_config, capsys, caplog, option: str) -> None:
    cfg = make_config("trainer=debug", model=option)
    printed = _dev_run(cfg, capsys, caplog)
    if cfg.model.get("images", True):  # the summary's FLOPs: one sample of the run's patch size (16³ here)
        size, net = cfg.data.patch.size, hydra.utils.instantiate(cfg.model.net)
        flops = get_human_readable_count(count_flops(net, (1, cfg.model.net.in_channels, size, size, size)))
        assert f"Total FLOPs: {flops}" in printed


@pytest.mark.parametrize("option", options("aug"))
def test_fast_dev_run_aug(make_config, capsys, caplog, option: str) -> None:
    _dev_run(make_config("trainer=debug", f"aug={option}"), capsys, caplog)


@pytest.mark.parametrize("option", options("data"))
def test_fast_dev_run_data(make_config, capsys, caplog, synthetic_root: Path, nifti_root: Path, option: str) -> None:
    # luna16 options read the synthetic set, which is in the real LUNA16 layout.
    if option == "nifti":
        overrides = [f"data.root={nifti_root}"]
    else:
        overrides = [f"data.root={synthetic_root}", "data.split.fold=0", "data.split.val_fold=1"]
    _dev_run(make_config("trainer=debug", f"data={option}", *overrides), capsys, caplog)


def test_nifti_scans_give_the_same_patches_as_mhd(make_config, synthetic_root: Path, nifti_root: Path) -> None:
    import numpy as np

    from lungexp.data.scans import index_scans

    assert set(index_scans(nifti_root)["subset"]) == {-1}
    patches = {}
    for name, root in (("mhd", synthetic_root), ("nifti", nifti_root)):
        datamodule = hydra.utils.instantiate(make_config(f"data.root={root}", "data.task=points",
                                                         f"data.labels_csv={nifti_root}/points.csv").data)
        patches[name] = np.asarray(datamodule.build_cache().patches)
    # NIfTI stores origin and spacing as float32, so a few interpolated voxels round 1 HU apart.
    np.testing.assert_allclose(patches["mhd"], patches["nifti"], atol=1)


@pytest.mark.parametrize("option", options("trainer"))
def test_fast_dev_run_trainer(make_config, capsys, caplog, option: str) -> None:
    cfg = make_config(f"trainer={option}", "++trainer.fast_dev_run=true")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("trainer=gpu needs a CUDA GPU; composed fine")
    if cfg.trainer.get("strategy") == "ddp":
        pytest.skip("trainer=ddp re-launches the command per rank; tested in a subprocess (test_ddp.py)")
    _dev_run(cfg, capsys, caplog)


@pytest.mark.parametrize("option", ["gpu", "ddp"])
def test_a_gpu_trainer_without_a_gpu_names_trainer_cpu(make_config, option: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for accelerator in (CUDAAccelerator, MPSAccelerator):
        monkeypatch.setattr(accelerator, "is_available", staticmethod(lambda: False))
    with pytest.raises(ConfigError, match=r"^trainer\.accelerator=gpu needs a GPU device.* with trainer=cpu"):
        check(make_config(f"trainer={option}"), "run")


def test_fast_dev_run_logs_nothing_to_mlflow(make_config) -> None:
    cfg = make_config("trainer=debug")
    assert train(check(cfg, "run")).mlflow_run_id is None


def test_mlflow_gets_params_with_dotted_names(make_config) -> None:
    cfg = make_config("trainer.max_epochs=1")
    result = train(check(cfg, "run"))
    assert result.mlflow_tracking_uri == cfg.paths.mlflow_uri
    run = MlflowClient(tracking_uri=result.mlflow_tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.params["model.net._target_"] == "lungexp.models.CNN3D"
    assert run.data.params["data.patch.size"] == "16"
    assert int(run.data.params["model_info.params"]) > 0
