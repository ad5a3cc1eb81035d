"""Faults, in real subprocesses with timeouts: SIGKILL, SIGTERM and Ctrl-C mid-work, and the runs they leave behind."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io import torch_io
from mlflow import MlflowClient

from lungexp.config.check import check
from lungexp.tracking.stale_runs import ENDED_BY_TAG, PID_TAG, end_stale_runs, owner_is_gone, process_tags
from lungexp.training.pipeline import train
from lungexp.utils.atomic import DiskFullError
from lungexp.utils.errors import Terminated
from tests.helpers.cli import entry_point_command, entry_point_env
from tests.helpers.config import NO_REPORT_EXTRAS, PROJECT_ROOT, tiny_run_overrides

COPIES = 40  # of each tiny scan, so a cache build takes long enough to be interrupted


@pytest.fixture(scope="module")
def many_scans(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset ``COPIES`` times over: new .mhd headers next to hard links to the same .raw files (a
    symbolic link would point outside the header's folder, which scan reading refuses)."""
    root = tmp_path_factory.mktemp("many_scans")
    labels = pd.read_csv(synthetic_root / "candidates_V2.csv")
    tables = []
    for copy in range(COPIES):
        for mhd in synthetic_root.glob("subset*/*.mhd"):
            uid = f"{mhd.stem}.{copy}"
            folder = root / mhd.parent.name / f"copy{copy}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{uid}.raw").hardlink_to(mhd.with_suffix(".raw"))
            (folder / f"{uid}.mhd").write_text(mhd.read_text().replace(f"{mhd.stem}.raw", f"{uid}.raw"))
            tables.append(labels[labels["seriesuid"] == mhd.stem].assign(seriesuid=uid))
    pd.concat(tables).to_csv(root / "candidates_V2.csv", index=False)
    return root


def _start(name: str, args: list[str], root: Path) -> subprocess.Popen:
    """An entry point in its own process group (as a shell job), output captured. Ctrl-C reaches it even when
    pytest itself runs as a background job, which inherits SIGINT ignored (and would pass that on)."""
    return subprocess.Popen(entry_point_command(name, args), cwd=PROJECT_ROOT, env=entry_point_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace", start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited


def _wait_for(condition: Callable[[], object], timeout: float, what: str, proc: subprocess.Popen) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _building(cache_dir: Path) -> bool:
    return any(cache_dir.glob("*.partial/shards/*.npy"))


def _preprocess_args(root: Path, cache_dir: Path) -> list[str]:
    return [*tiny_run_overrides(root, cache_dir, cache_dir / "mlflow"), "data.preprocess_workers=2", "data.patch.size=32"]


@pytest.mark.slow
def test_sigkill_of_preprocessing_leaves_no_worker_behind(many_scans: Path, tmp_path: Path) -> None:
    proc = _start("preprocess", _preprocess_args(many_scans, tmp_path / "cache"), tmp_path)
    workers = _wait_for(lambda: _building(tmp_path / "cache") and _children(proc.pid), 240, "the cache build", proc)
    proc.kill()  # SIGKILL: the parent gets no chance to stop its workers
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:  # never leave them running, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"worker(s) {survivors} outlived their killed parent {proc.pid}"


@pytest.mark.slow
def test_ctrl_c_during_preprocessing_ends_with_one_line(many_scans: Path, tmp_path: Path) -> None:
    proc = _start("preprocess", _preprocess_args(many_scans, tmp_path / "cache"), tmp_path)
    workers = _wait_for(lambda: _building(tmp_path / "cache") and _children(proc.pid), 240, "the cache build", proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err[-3000:]
    assert err.count("interrupted (Ctrl-C)") == 1, err[-3000:]
    time.sleep(1)
    assert not [pid for pid in workers if _alive(pid)]


@pytest.mark.slow
def test_ctrl_c_during_training_ends_with_one_line(synthetic_root: Path, mlflow_dir: Path, tmp_path: Path) -> None:
    args = [*tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", mlflow_dir), "trainer.max_epochs=500",
            "callbacks.early_stopping=null", "task_name=interrupted"]
    proc = _start("run", args, tmp_path)
    _wait_for(lambda: list(tmp_path.glob("logs/interrupted/runs/*/checkpoints/*.ckpt")), 240, "the first epoch", proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in out + err, (out + err)[-4000:]
    assert (out + err).count("KeyboardInterrupt") == 1  # Lightning's one line: "Detected KeyboardInterrupt, ..."


def test_only_runs_of_processes_that_are_gone_count_as_stale() -> None:
    here = process_tags()
    assert not owner_is_gone(here)  # this process: alive
    gone = {**here, PID_TAG: str(_exited_pid())}
    assert owner_is_gone({**gone, "lungexp.process_start": ""})
    assert not owner_is_gone({**gone, "lungexp.host": "another-host"})  # cannot check another machine
    assert not owner_is_gone({})  # runs from before these tags: left alone
    assert owner_is_gone({**here, "lungexp.process_start": "1"})  # the PID now belongs to a newer process


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_a_run_killed_mid_training_is_marked_killed_by_the_next_run(synthetic_root: Path, tmp_path: Path) -> None:
    mlflow = tmp_path / "mlflow"  # its own store: the killed run must be the only stale one
    base = tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", mlflow)
    client = MlflowClient(f"sqlite:///{mlflow}/mlflow.db")

    proc = _start("run", [*base, "trainer.max_epochs=500", "callbacks.early_stopping=null", "task_name=killed"],
                  tmp_path)

    def training_run() -> str | None:
        if not list(tmp_path.glob("logs/killed/runs/*/checkpoints/*.ckpt")):
            return None  # a checkpoint: an epoch is done, so the run exists and logs
        experiment = client.get_experiment_by_name("lungexp")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return runs[0].info.run_id if runs else None

    killed = _wait_for(training_run, 300, "the first epoch", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert client.get_run(killed).info.status == "RUNNING"  # what SIGKILL leaves behind

    experiment_id = client.get_experiment_by_name("lungexp").experiment_id
    live = client.create_run(experiment_id, tags=process_tags(), run_name="live").info.run_id  # e.g. a parallel job

    after = subprocess.run(entry_point_command("run", [*base, "trainer.max_epochs=1", *NO_REPORT_EXTRAS,
                                                      "task_name=next"]),
                           cwd=PROJECT_ROOT, env=entry_point_env(tmp_path), capture_output=True, text=True,
                           encoding="utf-8", errors="replace", timeout=600)
    assert after.returncode == 0, after.stderr[-4000:]
    run = client.get_run(killed)
    assert run.info.status == "KILLED"
    assert "ended without closing the run" in run.data.tags[ENDED_BY_TAG]
    assert client.get_run(live).info.status == "RUNNING"  # a live process's run is never touched
    assert end_stale_runs(client, "lungexp") == []
    statuses = {r.info.run_name.split()[0]: r.info.status for r in client.search_runs([experiment_id])}
    assert statuses["next"] == "FINISHED"  # run names: task_name + overrides
    client.set_terminated(live)


@pytest.mark.slow
def test_sigterm_to_the_process_group_fails_the_job_and_marks_the_run_killed(synthetic_root: Path,
                                                                            tmp_path: Path) -> None:
    """What a batch system's pre-emption (or `timeout`) sends, to every process of the job, DataLoader workers
    included: the job must not count as a success, and the workers must not crash it by dying first."""
    mlflow = tmp_path / "mlflow"
    client = MlflowClient(f"sqlite:///{mlflow}/mlflow.db")
    args = [*tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", mlflow), "trainer.max_epochs=500",
            "callbacks.early_stopping=null", "task_name=preempted", "data.num_workers=2"]
    proc = _start("run", args, tmp_path)
    (last,) = _wait_for(lambda: list(tmp_path.glob("logs/preempted/runs/*/checkpoints/last.ckpt")), 300,
                        "the first epoch", proc)
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (out + err)[-4000:]
    assert "Traceback" not in out + err, (out + err)[-4000:]
    (line,) = [line for line in err.splitlines() if line.startswith("stopped: ")]
    assert "by SIGTERM" in line and f"ckpt_path={last}" in line, line
    assert torch.load(last, weights_only=True)["epoch"] >= 0  # a whole checkpoint to resume from
    (run,) = client.search_runs([client.get_experiment_by_name("lungexp").experiment_id])
    assert run.info.status == "KILLED"
    assert not [pid for pid in workers if _alive(pid)]


class SigtermWhileTesting(pl.Callback):
    """SIGTERM to this process as the first test batch starts (Lightning's handler turns it into a clean stop)."""

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("mlflow", [True, False], ids=["resumed_to_test", "evaluated_without_mlflow"])
def test_sigterm_while_testing_names_the_checkpoint_to_go_on_from(make_config, mlflow: bool) -> None:
    with pytest.raises(Terminated) as stop:
        train(check(make_config("trainer.max_epochs=1", "callbacks.lr_monitor=null", "eval.bootstrap=0", "eval.montage_k=0",
                          "eval.gradcam.samples=0", f"+callbacks.stop._target_={__name__}.SigtermWhileTesting",
                          *([] if mlflow else ["~logger"])), "run"))
    last = stop.value.checkpoint
    assert last is not None and Path(last).name == "last.ckpt" and Path(last).is_file()
    then = (rf"resume with the same command and ckpt_path={re.escape(last)} \(or ckpt_path=last\) to test it in its "
            r"MLflow run" if mlflow else
            rf"test it with `python -m lungexp\.evaluate ckpt_path={re.escape(str(Path(last).parent))}/epoch000\.ckpt`")
    assert re.fullmatch(rf"by SIGTERM while testing, after 1 epoch\(s\) \(step \d+\); its training is complete: {then}",
                        str(stop.value)), str(stop.value)


def test_a_full_disk_while_checkpointing_is_one_error_naming_the_file_and_fails_the_run(make_config, monkeypatch,
                                                                                         mlflow_dir: Path) -> None:
    def disk_full(checkpoint: object, filepath: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() on a full disk: no file name

    monkeypatch.setattr(torch_io, "_atomic_save", disk_full)  # Lightning's write of every checkpoint
    with pytest.raises(DiskFullError, match=r"/checkpoints/\w+\.ckpt: No space left on device \(.+ free on that file "
                                            r"system\); free space there .* ckpt_path=last") as error:
        train(check(make_config("trainer.max_epochs=1", "callbacks.lr_monitor=null", "task_name=disk_full"), "run"))
    assert "\n" not in str(error.value)
    client = MlflowClient(f"sqlite:///{mlflow_dir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("lungexp").experiment_id],
                                "tags.`mlflow.runName` LIKE 'disk_full%'")
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_a_preempted_cross_validation_continues_its_fold_from_its_last_checkpoint(synthetic_root: Path,
                                                                                 tmp_path: Path) -> None:
    """SIGTERM in fold 0: one line saying how to go on; the same command again continues fold 0 in its own
    MLflow run from its last.ckpt (not from scratch, not in a second run), then trains the other folds."""
    mlflow = tmp_path / "mlflow"
    client = MlflowClient(f"sqlite:///{mlflow}/mlflow.db")
    args = [*tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", mlflow), "cv.folds=3",
            "data.split.method=series", "data.max_negatives_per_scan=2", "trainer.max_epochs=6",
            "callbacks.early_stopping=null", "callbacks.lr_monitor=null", "eval.bootstrap=0", "eval.montage_k=0",
            "eval.gradcam.samples=0", "task_name=preempted_cv"]
    proc = _start("run", args, tmp_path)
    (last,) = _wait_for(lambda: list(tmp_path.glob("logs/preempted_cv/runs/*/fold0/checkpoints/last.ckpt")), 300,
                        "fold 0's first epoch", proc)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (out + err)[-4000:]
    assert "Traceback" not in out + err, (out + err)[-4000:]
    (line,) = [line for line in err.splitlines() if line.startswith("stopped: ")]
    assert "by SIGTERM in epoch" in line and "in cross-validation fold 0 (" in line, line
    assert f"run the same command again (without ckpt_path) and fold 0 continues from {last}" in line, line
    experiment = client.get_experiment_by_name("lungexp").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`lungexp.cv.role` = 'parent'")
    (stopped,) = client.search_runs([experiment], "tags.`lungexp.cv.role` = 'fold'")
    assert (parent.info.status, stopped.info.status) == ("KILLED", "KILLED")
    stopped_at = torch.load(last, weights_only=True)["epoch"]
    assert stopped_at < 5  # stopped before its last epoch: what follows is a resume, not a re-test

    proc = _start("run", args, tmp_path)  # the same command
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out + err)[-4000:]
    assert f"continues its run {stopped.info.run_id} from {last}" in out + err
    folds = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(run.data.tags["lungexp.cv.fold"] for run in folds) == ["0", "1", "2"]  # no second run of fold 0
    assert all(run.info.status == "FINISHED" for run in folds)
    continued = client.get_run(parent.info.run_id)
    assert continued.info.status == "FINISHED" and continued.data.tags[PID_TAG] == str(proc.pid)
    assert ENDED_BY_TAG not in continued.data.tags  # never taken for a stale run while it ran again
    fold0 = client.get_run(stopped.info.run_id)
    assert fold0.data.tags["resumed_from"] == str(last)
    assert torch.load(last, weights_only=True)["epoch"] == 5  # trained on to its sixth and last epoch
