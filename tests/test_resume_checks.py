"""``ckpt_path=...`` resumes only the run its checkpoint belongs to: same model, data and patches, not finished."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lungexp.training.checkpoint import RUN_CONFIG_KEY, CheckpointError
from lungexp.training.pipeline import train
from lungexp.utils.errors import ConfigError
from tests.helpers.config import TINY_NETS, compose_config, tiny_data_overrides

RUN = ("trainer.max_epochs=2", "callbacks.lr_monitor=null", "~logger", "test_after_fit=false", "task_name=checks")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """``last.ckpt`` of a one-epoch run: resumed with ``trainer.max_epochs=2`` it goes on, with 1 it had finished."""
    root = tmp_path_factory.mktemp("stopped")
    cfg = compose_config(["model=cnn3d", *TINY_NETS["cnn3d"], *tiny_data_overrides(synthetic_root,
                          synthetic_root.parent / "cache"), *RUN, "trainer.max_epochs=1"], root)
    return Path(train(cfg).best_checkpoint).with_name("last.ckpt")


def test_a_changed_patch_size_is_refused_naming_both_values(make_config, stopped_run: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.patch\.size: 16 in the checkpoint, 24 now") as error:
        train(make_config(*RUN, f"ckpt_path={stopped_run}", "data.patch.size=24"))
    assert str(stopped_run) in str(error.value) and "trainer.max_epochs" in str(error.value)


def test_other_data_or_another_model_is_refused(make_config, stopped_run: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.split\.fold: 0 in the checkpoint, 2 now"):
        train(make_config(*RUN, f"ckpt_path={stopped_run}", "data.split.fold=2"))
    with pytest.raises(ConfigError, match=r"model\.net\._target_: 'lungexp\.models\.CNN3D' in the checkpoint, "
                                          r"'lungexp\.models\.ResNet3D' now"):
        train(make_config(*RUN, f"ckpt_path={stopped_run}", model="resnet3d"))


def test_a_finished_run_is_not_resumed(make_config, stopped_run: Path) -> None:
    with pytest.raises(ConfigError, match=r"had already finished \(1 epoch\(s\) of trainer\.max_epochs=1\); there "
                                          r"is nothing to resume"):
        train(make_config(*RUN, "trainer.max_epochs=1", f"ckpt_path={stopped_run}"))


def test_what_may_change_does_and_the_run_goes_on(make_config, stopped_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "checkpoints" / "last.ckpt"
    copy.parent.mkdir()
    copy.write_bytes(stopped_run.read_bytes())
    train(make_config(*RUN, f"ckpt_path={copy}", "data.num_workers=1"))  # trainer.max_epochs 1 -> 2 as well
    assert torch.load(copy, weights_only=True)["epoch"] == 1  # the second epoch, written next to the first


def test_a_checkpoint_without_its_run_config_or_damaged_is_refused(make_config, stopped_run: Path,
                                                                    tmp_path: Path) -> None:
    state = torch.load(stopped_run, weights_only=True)
    del state[RUN_CONFIG_KEY]
    torch.save(state, tmp_path / "older.ckpt")
    with pytest.raises(ConfigError, match="does not hold the config of its run"):
        train(make_config(*RUN, f"ckpt_path={tmp_path / 'older.ckpt'}"))
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(stopped_run.read_bytes()[:4000])
    with pytest.raises(CheckpointError, match=f"{truncated}: not a readable PyTorch checkpoint"):
        train(make_config(*RUN, f"ckpt_path={truncated}"))
