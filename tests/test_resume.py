"""A run SIGKILLed mid-epoch and resumed with ``ckpt_path=last`` ends where an unbroken run ends."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lungexp.config.check import check
from lungexp.training.pipeline import train
from tests.helpers.cli import run_entry_point
from tests.helpers.config import FAST_OVERRIDES, NO_REPORT_EXTRAS, TINY_NETS, tiny_data_overrides

# Deterministic and exercising every random draw: balanced sampler, augmentation, dropout.
RUN = ["trainer.max_epochs=3", "trainer.deterministic=true", "task_name=resume",
       "callbacks.early_stopping=null", *NO_REPORT_EXTRAS, *FAST_OVERRIDES, *TINY_NETS["cnn3d"]]
KILL_AT_STEP = 13  # 9 steps per epoch on the tiny data: mid-way through the second epoch


def _run(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_entry_point("run", [*RUN, *overrides], root, timeout=900)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
# TorchIO in the DataLoader path; the batch augmentation on the device from the device cache.
@pytest.mark.parametrize("augmentation", [["aug=light"], ["aug=batch_strong", "data.cache_memory=device"]],
                         ids=["torchio", "batch_on_device"])
def test_killed_run_resumes_to_the_unbroken_result(make_config, synthetic_root: Path, tmp_path: Path,
                                                   augmentation: list[str]) -> None:
    data = [*tiny_data_overrides(synthetic_root, synthetic_root.parent / "cache"), *augmentation]
    killed = _run(tmp_path, *data, "+callbacks.kill._target_=tests.helpers.kill.KillAtStep",
                  f"+callbacks.kill.step={KILL_AT_STEP}")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-3000:]
    (checkpoint,) = (tmp_path / "logs" / "resume" / "runs").glob("*/checkpoints/last.ckpt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] < KILL_AT_STEP
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("lungexp").experiment_id])
    assert run.info.status == "RUNNING"  # nothing could mark it

    resumed = _run(tmp_path, *data, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]

    unbroken = train(check(make_config(*RUN, *augmentation, "~logger", "callbacks.lr_monitor=null"), "run"))
    final = _weights(checkpoint)  # the resumed run keeps writing next to the checkpoint it resumed
    reference = _weights(Path(unbroken.best_checkpoint).with_name("last.ckpt"))
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference), "resumed weights differ from unbroken run's"

    (after,) = client.search_runs([run.info.experiment_id])
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert after.data.tags["resumed_from"] == str(checkpoint)
    assert after.data.metrics["best/val_auroc"] == pytest.approx(unbroken.optimized_metric)
    assert after.data.metrics["test/auroc"] == pytest.approx(unbroken.metrics["test/auroc"])
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val/auroc")]
    assert len(epochs) == 3, epochs  # one validation per epoch, none lost or repeated
