"""Sweeps whose jobs run as cluster jobs: Hydra's submitit launcher, in its local form (``submitit_slurm``
submits the same jobs to SLURM)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from lungexp.tracking.stale_runs import PID_TAG
from tests.helpers.cli import entry_point_command, entry_point_env
from tests.helpers.config import NO_REPORT_EXTRAS, PROJECT_ROOT, tiny_run_overrides
from tests.helpers.processes import run_process_tree


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_job_as_its_own_process(synthetic_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher is not installed (pip install -e '.[cluster]')")
    command = entry_point_command("run", ["-m", "hydra/launcher=submitit_local", "seed=1,2", "trainer.max_epochs=1",
                                          "task_name=submitit", *NO_REPORT_EXTRAS,
                                          *tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", tmp_path)])
    finished = run_process_tree(command, cwd=PROJECT_ROOT, env={**entry_point_env(tmp_path), "OMP_NUM_THREADS": "1"},
                                timeout=600)
    assert finished.returncode == 0, finished.output[-6000:]
    assert finished.left_behind == [], finished.left_behind
    assert "Submitit 'local' sweep output dir" in finished.output

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("lungexp").experiment_id])
    [sweep] = [run for run in runs if MLFLOW_PARENT_RUN_ID not in run.data.tags]
    jobs = [run for run in runs if run.data.tags.get(MLFLOW_PARENT_RUN_ID) == sweep.info.run_id]
    assert len(jobs) == len(runs) - 1 == 2
    assert sorted(run.data.params["seed"] for run in jobs) == ["1", "2"]
    assert all(run.info.status == "FINISHED" for run in runs) and all("test/auroc" in run.data.metrics for run in jobs)
    # each job in a submitit process of its own, not in the process that launched the sweep
    job_processes = {run.data.tags[PID_TAG] for run in jobs}
    assert len(job_processes) == 2 and sweep.data.tags[PID_TAG] not in job_processes
    [sweep_dir] = (tmp_path / "logs" / "submitit" / "multiruns").iterdir()
    assert len(list((sweep_dir / ".submitit").glob("*/*_log.out"))) == 2  # submitit's log of each job
