"""Training on several processes: Lightning's own DDP launch, inside a ``-m`` sweep, and under torchrun;
SLURM's environment; what runs only on CUDA.

Each DDP run is ``python -m lungexp.run`` in a subprocess with two CPU processes (gloo): Lightning's ddp
launcher re-runs the command per rank, so it cannot run inside pytest itself.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import read_write

from lungexp.config import schema
from lungexp.config.checkpoint_groups import checkpoint_evaluation
from lungexp.inference.checkpoint_evaluation import evaluate_checkpoint
from lungexp.training.devices import log_unsupported, supported_trainer
from lungexp.training.distributed import sweep_job_ranks
from lungexp.utils.errors import ConfigError
from tests.helpers.cli import entry_point_command, entry_point_env
from tests.helpers.config import PROJECT_ROOT, compose_config, mlflow_overrides, tiny_run_overrides
from tests.helpers.mlflow_ui import free_port
from tests.helpers.processes import Finished, run_process_tree

DDP_ON_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
              "trainer.max_epochs=1"]
TIMEOUT_S = 600


def run_ddp(command: list[str], root: Path) -> Finished:
    finished = run_process_tree(command, cwd=PROJECT_ROOT, env={**entry_point_env(root), "OMP_NUM_THREADS": "1"},
                                timeout=TIMEOUT_S)
    assert finished.returncode == 0, finished.output[-6000:]
    assert finished.left_behind == [], finished.left_behind
    return finished


def runs_of(store: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    return client.search_runs([client.get_experiment_by_name("lungexp").experiment_id])


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_test(synthetic_root: Path, tmp_path: Path) -> None:
    finished = run_ddp(entry_point_command("run", [*DDP_ON_CPU, "task_name=ddp",
                                                   *tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache",
                                                                  tmp_path)]), tmp_path)
    assert "distributed_backend=gloo" in finished.output
    assert "All distributed processes registered. Starting with 2 processes" in finished.output
    assert "sync_batchnorm=true needs CUDA GPUs" in finished.output
    assert finished.output.count("best checkpoint") == 1, "only rank 0 prints the summary"
    runs = runs_of(tmp_path)
    assert len(runs) == 1, "only rank 0 may create an MLflow run"
    assert runs[0].info.status == "FINISHED"
    assert "test/auroc" in runs[0].data.metrics
    # the predictions table gathers both ranks' parts of the test split (subset0)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    predictions = pd.read_csv(client.download_artifacts(runs[0].info.run_id, "predictions/test_predictions.csv",
                                                        str(tmp_path / "downloaded")))
    candidates = pd.read_csv(synthetic_root / "candidates_V2.csv")
    test_series = {p.stem for p in (synthetic_root / "subset0").glob("*.mhd")}
    assert len(predictions) == candidates["seriesuid"].isin(test_series).sum()
    assert predictions["cache_row"].is_unique and set(predictions["seriesuid"]) == test_series


@pytest.mark.slow
def test_ddp_gathers_every_head_of_a_multitask_target(synthetic_root: Path, tmp_path: Path) -> None:
    """Both ranks' rows of every head reach one predictions table; an auxiliary head's metrics are reduced too."""
    run_ddp(entry_point_command("run", [*DDP_ON_CPU, "task_name=ddp_heads", "data=synthetic_malignancy",
                                        "target=lidc_attributes",
                                        *tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache",
                                                            tmp_path)]), tmp_path)
    [run] = runs_of(tmp_path)
    assert run.info.status == "FINISHED"
    assert {"test/auroc", "test/texture/auroc_macro", "test/spiculation/qwk",
            "test/calcification/auroc"} <= run.data.metrics.keys()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    predictions = pd.read_csv(client.download_artifacts(run.info.run_id, "predictions/test_predictions.csv",
                                                        str(tmp_path / "downloaded")))
    assert predictions["cache_row"].is_unique
    assert {"texture_label", "texture_prediction", "spiculation_probability_ge2",
            "calcification_probability"} <= set(predictions.columns)
    assert run.data.metrics["test/texture/samples"] + run.data.metrics["test/texture/masked"] == len(predictions)


@pytest.mark.slow
def test_ddp_inside_a_sweep_trains_each_job_once_with_both_processes(synthetic_root: Path, tmp_path: Path) -> None:
    finished = run_ddp(entry_point_command("run", ["-m", *DDP_ON_CPU, "seed=1,2", "task_name=ddp_sweep",
                                                   *tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache",
                                                                  tmp_path)]), tmp_path)
    assert finished.output.count("Starting with 2 processes") == 2  # one process group per job

    runs = runs_of(tmp_path)
    sweeps = [run for run in runs if MLFLOW_PARENT_RUN_ID not in run.data.tags]
    assert len(sweeps) == 1
    jobs = [run for run in runs if run.data.tags.get(MLFLOW_PARENT_RUN_ID) == sweeps[0].info.run_id]
    assert len(jobs) == len(runs) - 1 == 2, "one MLflow run per job"
    assert sorted(run.data.params["seed"] for run in jobs) == ["1", "2"]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert all("test/auroc" in run.data.metrics for run in jobs)

    task = tmp_path / "logs" / "ddp_sweep"
    assert not (task / "runs").exists(), "a rank ran as a run of its own"
    [sweep] = (task / "multiruns").iterdir()
    assert sorted(path.name for path in sweep.iterdir() if path.is_dir()) == ["0", "1"]
    for job in ("0", "1"):  # rank 1 ran in its job's folder, with its own log
        assert (sweep / job / "train_ddp_process_1.log").is_file()
        assert list((sweep / job / "checkpoints").glob("epoch*.ckpt"))


@pytest.mark.slow
def test_torchrun_logs_one_run_whose_metrics_equal_one_process(synthetic_root: Path, mlflow_dir: Path,
                                                               tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nnodes", "1", "--nproc-per-node", "2",
                "--master-port", str(free_port()), "-m", "lungexp.run"]
    finished = run_ddp([*torchrun, *DDP_ON_CPU, "trainer.num_nodes=1", "task_name=torchrun", f"hydra.run.dir={run_dir}",
                        *tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", tmp_path)], tmp_path)
    assert "Starting with 2 processes" in finished.output
    assert not (run_dir / "train_ddp_process_1.log").exists(), "torchrun starts the ranks, not Lightning"
    assert finished.output.count("best checkpoint") == 1, "only rank 0 prints the summary"
    [run] = runs_of(tmp_path)
    assert run.info.status == "FINISHED"
    assert {"train/loss_epoch", "val/auroc", "best/val_auroc", "test/auroc", "test/cpm"} <= run.data.metrics.keys()

    # One process scoring the same checkpoint on the same splits gets the metrics both ranks reduced.
    [checkpoint] = run_dir.glob("checkpoints/epoch*.ckpt")
    for split in ("val", "test"):
        overrides = (f"ckpt_path={checkpoint}", f"split={split}", "device=cpu", "eval.montage_k=0",
                     "eval.gradcam.samples=0", *mlflow_overrides(mlflow_dir))
        single = evaluate_checkpoint(checkpoint_evaluation(
            compose_config(overrides, tmp_path / split, config_name="evaluate"), overrides))
        if split == "val":
            # an odd count: a sampler that pads the ranks to equal length would count a patch twice
            assert len(single.predictions) % 2 == 1
            labels, probabilities = single.predictions["label"], single.predictions["probability"]
            loss = -np.mean(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities))
            assert run.data.metrics["val/loss"] == pytest.approx(loss, abs=1e-4)
        compared = [name for name in single.metrics if name in run.data.metrics and not math.isnan(single.metrics[name])]
        assert f"{split}/auroc" in compared and f"{split}/ece" in compared
        for name in compared:
            assert run.data.metrics[name] == pytest.approx(single.metrics[name], abs=1e-5), name


def test_slurm_script_matches_lightnings_slurm_environment(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """``scripts/slurm_train.sbatch`` starts one task per GPU on each node, as Lightning's SLURM environment
    requires of ``trainer.devices`` and ``trainer.num_nodes``."""
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    script = (PROJECT_ROOT / "scripts" / "slurm_train.sbatch").read_text()
    settings = dict(line.removeprefix("#SBATCH --").split("=", 1) for line in script.splitlines()
                    if line.startswith("#SBATCH --") and "=" in line)
    nodes, tasks, gpus = int(settings["nodes"]), int(settings["ntasks-per-node"]), int(settings["gpus-per-node"])
    assert tasks == gpus and nodes > 1
    assert 'srun "$PYTHON" -m lungexp.run trainer=ddp' in script
    assert "trainer.devices=$SLURM_NTASKS_PER_NODE" in script and "trainer.num_nodes=$SLURM_NNODES" in script
    for name, value in {"SLURM_NTASKS": nodes * tasks, "SLURM_NTASKS_PER_NODE": tasks, "SLURM_NNODES": nodes,
                        "SLURM_NODEID": 1, "SLURM_PROCID": tasks + 1, "SLURM_LOCALID": 1, "SLURM_JOB_ID": 7,
                        "SLURM_JOB_NAME": "lungexp", "SLURM_NODELIST": "gpu[01-02]"}.items():
        monkeypatch.setenv(name, str(value))
    cfg = make_config("trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={tasks}", f"trainer.num_nodes={nodes}")
    trainer = hydra.utils.instantiate(supported_trainer(cfg.trainer), logger=False, callbacks=[])
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.creates_processes_externally
    environment.validate_settings(num_devices=tasks, num_nodes=nodes)  # raises when they disagree
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank) == (nodes * tasks, tasks + 1, 1)


def test_fp16_is_refused_before_any_work_without_cuda(make_config) -> None:
    with pytest.raises(ConfigError, match=r"trainer.precision=16-mixed \(fp16\) needs a CUDA GPU.*bf16-mixed"):
        schema.check_config(make_config("trainer=cpu", "trainer.precision=16-mixed"))
    schema.check_config(make_config("trainer=cpu", "trainer.precision=bf16-mixed"))


def test_sync_batchnorm_goes_off_without_cuda_and_says_so(make_config, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert cfg.trainer.sync_batchnorm
    with caplog.at_level(logging.INFO, logger="lungexp.training.devices"):
        log_unsupported(cfg.trainer)
    assert supported_trainer(cfg.trainer).sync_batchnorm is False
    assert cfg.trainer.sync_batchnorm, "the composed config stays as it was composed"
    assert "sync_batchnorm=true needs CUDA GPUs" in caplog.text


def test_a_sweep_job_hands_lightning_its_own_command_then_restores_the_environment(
        make_config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The mechanics behind the sweep test above, without starting processes."""
    cfg = make_config(*DDP_ON_CPU, "seed=3")
    trainer = hydra.utils.instantiate(supported_trainer(cfg.trainer), logger=False, callbacks=[])
    job = copy.deepcopy(HydraConfig.instance().cfg)  # this job of a -m sweep
    with read_write(job.hydra):
        job.hydra.mode = RunMode.MULTIRUN
        job.hydra.runtime.output_dir = str(tmp_path / "multiruns" / "0")
    monkeypatch.setattr(HydraConfig.instance(), "cfg", job)
    monkeypatch.setattr(sys, "argv", ["lungexp/run.py", "-m", "seed=3,4"])
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", ModuleSpec("lungexp.run", None))
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    with sweep_job_ranks(trainer):
        assert sys.argv == ["lungexp/run.py", *job.hydra.overrides.task] and "seed=3" in sys.argv
        assert HydraConfig.get().run.dir == str(tmp_path / "multiruns" / "0")  # Lightning passes it on
        os.environ["LOCAL_RANK"] = "0"  # as Lightning's launcher sets it
    assert "LOCAL_RANK" not in os.environ, "the next job would wait for ranks it never starts"
    assert sys.argv == ["lungexp/run.py", "-m", "seed=3,4"]

    monkeypatch.setattr(sys.modules["__main__"], "__spec__", ModuleSpec("submitit.core._submit", None))
    with pytest.raises(ConfigError, match="re-running the command, but this sweep's jobs run inside submitit"), \
            sweep_job_ranks(trainer):
        pass
