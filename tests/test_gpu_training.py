"""The GPU training options (aug=batch_*, data.cache_memory, model.compile, model.channels_last) from the CLI and in
a sweep, checkpoints unchanged by them, bench_gpu.py's smoke run, and (marked cuda) the same on a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient

from lungexp.data.loading.memory_cache import DeviceBatches
from lungexp.data.names import IMAGE_KEY
from tests.helpers.cli import run_entry_point
from tests.helpers.config import NO_REPORT_EXTRAS, PROJECT_ROOT, tiny_run_overrides

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_compile_and_channels_last_keep_the_checkpoint_names(make_config) -> None:
    plain = hydra.utils.instantiate(make_config().model)
    module = hydra.utils.instantiate(make_config("model.compile=true", "model.channels_last=true").model)
    module.configure_model()
    assert module.state_dict().keys() == plain.state_dict().keys()  # compiled in place: no _orig_mod. prefix
    conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    module.trainer = pl.Trainer(logger=False, enable_checkpointing=False)
    batch = module.on_after_batch_transfer({IMAGE_KEY: torch.rand(2, 1, 8, 8, 8)}, 0)
    assert batch[IMAGE_KEY].is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.slow
def test_gpu_options_train_in_a_sweep_from_the_cli(synthetic_root: Path, mlflow_dir: Path, tmp_path: Path) -> None:
    args = ["-m", "aug=batch_light,batch_strong", "data.cache_memory=ram,device", "trainer.max_epochs=1",
            "trainer.limit_train_batches=3", "task_name=gpu_options", *NO_REPORT_EXTRAS,
            *tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", tmp_path)]
    finished = run_entry_point("run", args, tmp_path, timeout=900)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = [run for run in client.search_runs([client.get_experiment_by_name("lungexp").experiment_id])
            if "mlflow.parentRunId" in run.data.tags]  # the sweep's jobs, nested in its parent run
    assert sorted((r.data.params["aug"], r.data.params["data.cache_memory"]) for r in runs) == [
        ("batch_light", "device"), ("batch_light", "ram"), ("batch_strong", "device"), ("batch_strong", "ram")]
    assert all(r.info.status == "FINISHED" and "test/auroc" in r.data.metrics for r in runs)


@pytest.mark.slow
def test_bench_gpu_smoke_prints_its_table() -> None:
    finished = subprocess.run([sys.executable, "scripts/bench_gpu.py", "--smoke"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, encoding="utf-8", timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    table = [line for line in finished.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | patch | GFLOPs | (a) samples/s | (a) of peak | (b) samples/s")
    assert [row.split(" | ")[0] for row in table[1:]] == ["| cnn3d", "| resnet3d-18", "| densenet3d"]
    assert "Top kernels of one step of (d)" in finished.stdout


@pytest.mark.cuda
@cuda
def test_device_cache_on_the_gpu_serves_the_dataloader_batches(make_config) -> None:
    module = hydra.utils.instantiate(make_config("aug=none", "data.normalize=zscore").data, _convert_="partial")
    module.prepare_data()
    module.setup("fit")
    train = module.datasets["train"]
    on_gpu = DeviceBatches.load(module.cache.patches, train.rows, train.labels, module.window, torch.device("cuda"))
    torch.manual_seed(0)
    loader = module.train_dataloader()
    drawn = list(loader.batch_sampler)
    loader.sampler.set_epoch(0)  # the same draws again
    for positions, expected in zip(drawn, loader, strict=True):
        served = on_gpu(positions)
        assert served[IMAGE_KEY].device.type == "cuda"
        for key, value in expected.items():  # zscore's reductions may differ on the GPU by rounding
            torch.testing.assert_close(served[key].cpu(), value, rtol=0, atol=1e-5)


@pytest.mark.cuda
@cuda
@pytest.mark.slow
def test_every_gpu_option_trains_on_the_gpu(synthetic_root: Path, tmp_path: Path) -> None:
    args = ["trainer=gpu", "aug=batch_strong", "data.cache_memory=device", "model.compile=true",
            "model.channels_last=true", "+trainer.benchmark=true", "trainer.max_epochs=2",
            *tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", tmp_path)]
    finished = run_entry_point("run", args, tmp_path, timeout=600)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    assert "data.cache_memory=device" in finished.stdout + finished.stderr and "cuda:0" in finished.stdout + finished.stderr
