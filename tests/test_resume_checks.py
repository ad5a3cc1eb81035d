"""``ckpt_path=...`` resumes only the run its checkpoint belongs to: same model, data and patches, a run that was
stopped (a finished one only when asked to), and that run is FINISHED only once it has been tested."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient

from lungexp.config.check import check
from lungexp.tracking.stale_runs import process_tags
from lungexp.training.checkpoint import DATA_IDENTITY_KEY, RECIPE_KEY, RUN_CONFIG_KEY, CheckpointError
from lungexp.training.pipeline import train
from lungexp.utils.errors import ConfigError
from tests.helpers.config import TINY_NETS, compose_config, tiny_data_overrides

RUN = ("trainer.max_epochs=2", "callbacks.lr_monitor=null", "~logger", "test_after_fit=false", "task_name=checks")


class CrashInSecondEpoch(pl.Callback):
    """What a killed process leaves: the last.ckpt of the first of two epochs."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("killed")


class RunStatusWhenTesting(pl.Callback):
    """Records the MLflow run's status as the test stage starts."""

    seen: list[str] = []

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = trainer.logger
        assert logger is not None
        self.seen.append(logger.experiment.get_run(logger.run_id).info.status)  # type: ignore[attr-defined]


def _train_tiny(root: Path, synthetic_root: Path, *overrides: str):
    return train(check(compose_config(["model=cnn3d", *TINY_NETS["cnn3d"], *tiny_data_overrides(
        synthetic_root, synthetic_root.parent / "cache"), *RUN, *overrides], root), "run"))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """``last.ckpt`` of a two-epoch run killed in its second epoch, its data spelled ``${paths.data_dir}/luna16``."""
    root = tmp_path_factory.mktemp("stopped")
    with pytest.raises(RuntimeError, match="killed"):
        _train_tiny(root, synthetic_root, f"paths.data_dir={synthetic_root.parent}", "data.root=${paths.data_dir}/luna16",
                    f"+callbacks.crash._target_={__name__}.CrashInSecondEpoch")
    return root / "output0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """``last.ckpt`` of a one-epoch run that ended (without MLflow)."""
    return Path(_train_tiny(tmp_path_factory.mktemp("finished"), synthetic_root,
                            "trainer.max_epochs=1").best_checkpoint).with_name("last.ckpt")


def _copy(checkpoint: Path, folder: Path) -> Path:
    copy = folder / "checkpoints" / "last.ckpt"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(checkpoint, copy)
    return copy


def test_a_changed_patch_size_is_refused_naming_both_values(make_config, stopped_run: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.patch\.size: 16 in the checkpoint, 24 now") as error:
        train(check(make_config(*RUN, f"ckpt_path={stopped_run}", "data.patch.size=24"), "run"))
    assert str(stopped_run) in str(error.value) and "trainer.max_epochs" in str(error.value)


def test_other_data_or_another_model_is_refused(make_config, stopped_run: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.split\.fold: 0 in the checkpoint, 2 now"):
        train(check(make_config(*RUN, f"ckpt_path={stopped_run}", "data.split.fold=2"), "run"))
    with pytest.raises(ConfigError, match=r"model\.net\._target_: 'lungexp\.models\.CNN3D' in the checkpoint, "
                                          r"'lungexp\.models\.ResNet3D' now"):
        train(check(make_config(*RUN, f"ckpt_path={stopped_run}", model="resnet3d"), "run"))


def test_a_group_switched_off_is_one_difference_not_one_per_leaf(make_config, stopped_run: Path) -> None:
    """aug=none makes aug.train null where the run had a transform: one difference, its value shown cut."""
    with pytest.raises(ConfigError, match=r"aug\.train: \{'_target_': 'torchio\.Compose', .*… in the checkpoint, "
                                          r"None now") as error:
        train(check(make_config(*RUN, f"ckpt_path={stopped_run}", "aug=none"), "run"))
    assert "aug.train._target_" not in str(error.value) and "(unset)" not in str(error.value)


def test_the_same_spelling_of_other_data_is_refused_by_what_it_resolves_to(make_config, stopped_run: Path,
                                                                          synthetic_root: Path, tmp_path: Path) -> None:
    """``paths.data_dir=<other>`` leaves ``data.root: ${paths.data_dir}/luna16`` as written, not where it points."""
    (tmp_path / "luna16").mkdir()  # another dataset that exists: the run's check passes, the resume's refuses it
    with pytest.raises(ConfigError, match="must train on the data its run trained on") as error:
        train(check(make_config(*RUN, f"ckpt_path={stopped_run}", f"paths.data_dir={tmp_path}",
                          "data.root=${paths.data_dir}/luna16"), "run"))
    assert f"data.root: '{synthetic_root}' in the checkpoint, '{tmp_path / 'luna16'}' now" in str(error.value)
    assert "data.labels_csv" in str(error.value)


def test_data_changed_under_the_same_paths_is_refused_by_its_fingerprint(make_config, stopped_run: Path,
                                                                        tmp_path: Path) -> None:
    state = torch.load(stopped_run, weights_only=True)
    recorded = state[DATA_IDENTITY_KEY]["fingerprint"]
    assert recorded
    state[DATA_IDENTITY_KEY]["fingerprint"] = "0123456789abcdef"  # as if the scans had changed since
    changed = tmp_path / "changed.ckpt"
    torch.save(state, changed)
    with pytest.raises(ConfigError, match=f"the data's fingerprint is {recorded} now and was 0123456789abcdef"):
        train(check(make_config(*RUN, f"ckpt_path={changed}"), "run"))


def test_a_finished_run_trains_on_only_when_asked(make_config, finished_run: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    for epochs in (1, 2):  # its own limit, or a larger one: either way its run had finished
        with pytest.raises(ConfigError, match=r"its run had already finished \(its training had ended: 1 epoch\(s\) of "
                                              r"trainer\.max_epochs=1\); resuming is for stopped runs\. To train it "
                                              r"on in its run, add extend_finished=true"):
            train(check(make_config(*RUN, f"trainer.max_epochs={epochs}", f"ckpt_path={finished_run}"), "run"))
    with pytest.raises(ConfigError, match=r"nothing is left to train \(1 epoch\(s\) of trainer\.max_epochs=1\)"):
        train(check(make_config(*RUN, "trainer.max_epochs=1", f"ckpt_path={finished_run}", "extend_finished=true"), "run"))
    with pytest.raises(ConfigError, match="extend_finished=true trains on a finished run, named by ckpt_path"):
        train(check(make_config(*RUN, "extend_finished=true"), "run"))
    copy = _copy(finished_run, tmp_path)
    with caplog.at_level(logging.WARNING, logger="lungexp.training.resume"):
        train(check(make_config(*RUN, f"ckpt_path={copy}", "extend_finished=true"), "run"))
    assert "extend_finished=true: it trains on" in caplog.text
    assert torch.load(copy, weights_only=True)["epoch"] == 1


def test_a_stopped_run_goes_on_with_what_may_change_and_its_data_spelled_otherwise(make_config, stopped_run: Path,
                                                                                   synthetic_root: Path,
                                                                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothing is left to train \(1 epoch\(s\) of trainer\.max_epochs=1\)"):
        train(check(make_config(*RUN, f"ckpt_path={stopped_run}", "trainer.max_epochs=1"), "run"))  # below its own 2
    copy = _copy(stopped_run, tmp_path)
    # data.root as an absolute path where the checkpoint's run wrote ${paths.data_dir}/luna16: the same folder
    train(check(make_config(*RUN, f"ckpt_path={copy}", "data.num_workers=1", f"data.root={synthetic_root}"), "run"))
    assert torch.load(copy, weights_only=True)["epoch"] == 1  # the second epoch, written next to the first


@pytest.mark.slow
def test_a_run_is_finished_after_its_test_and_one_killed_while_testing_is_resumed_to_be_tested(
        make_config, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watched = ("trainer.max_epochs=1", "callbacks.lr_monitor=null", "eval.bootstrap=0", "eval.montage_k=0",
               "eval.gradcam.samples=0", f"paths.log_dir={tmp_path.parent}",
               f"task_name={tmp_path.name}", f"+callbacks.watch._target_={__name__}.RunStatusWhenTesting")
    RunStatusWhenTesting.seen.clear()
    result = train(check(make_config(*watched), "run"))
    assert RunStatusWhenTesting.seen == ["RUNNING"]  # a kill -9 while testing leaves it for the stale-run sweep
    client = MlflowClient(result.mlflow_tracking_uri)
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    client.set_terminated(result.mlflow_run_id, "KILLED")  # as the sweep marks it after such a kill
    last = Path(result.best_checkpoint).with_name("last.ckpt")

    with caplog.at_level(logging.INFO, logger="lungexp.training.resume"):
        again = train(check(make_config(*watched, "ckpt_path=last"), "run"))
    assert f"its MLflow run {result.mlflow_run_id} is KILLED: it is tested now" in caplog.text
    assert again.mlflow_run_id == result.mlflow_run_id and "test/auroc" in again.metrics
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from"] == str(last)
    assert torch.load(last, weights_only=True)["epoch"] == 0  # tested, not trained on

    with pytest.raises(ConfigError, match=r"\(the newest last\.ckpt of this task_name\): its run had already finished "
                                          r"\(its MLflow run is FINISHED\)"):
        train(check(make_config(*watched, "ckpt_path=last", "trainer.max_epochs=2"), "run"))
    train(check(make_config(*watched, "ckpt_path=last", "trainer.max_epochs=2", "extend_finished=true"), "run"))
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resume.extended_finished"] == "its MLflow run is FINISHED"
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_a_run_that_a_live_process_trains_is_not_resumed(make_config, finished_run: Path, mlflow_dir: Path,
                                                         tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{mlflow_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("lungexp") or client.create_experiment("lungexp")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    live = client.create_run(experiment_id, tags=process_tags()).info.run_id  # as another terminal's run
    state = torch.load(finished_run, weights_only=True)
    state[RECIPE_KEY]["mlflow"] = {"run_id": live}
    torch.save(state, tmp_path / "live.ckpt")
    with pytest.raises(ConfigError, match=f"its MLflow run {live} is RUNNING in process {process_tags()['lungexp.pid']}"):
        train(check(make_config("callbacks.lr_monitor=null", f"ckpt_path={tmp_path / 'live.ckpt'}"), "run"))
    client.set_terminated(live)


def test_a_checkpoint_without_its_run_config_or_damaged_is_refused(make_config, stopped_run: Path,
                                                                    tmp_path: Path) -> None:
    state = torch.load(stopped_run, weights_only=True)
    del state[RUN_CONFIG_KEY]
    torch.save(state, tmp_path / "older.ckpt")
    with pytest.raises(ConfigError, match="does not hold the config of its run"):
        train(check(make_config(*RUN, f"ckpt_path={tmp_path / 'older.ckpt'}"), "run"))
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(stopped_run.read_bytes()[:4000])
    with pytest.raises(CheckpointError, match=f"{truncated}: not a readable PyTorch checkpoint"):
        train(check(make_config(*RUN, f"ckpt_path={truncated}"), "run"))
