"""`hparams_search=optuna`: an Optuna search over lr, weight decay, dropout and width, grouped like a sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.helpers.cli import run_entry_point
from tests.helpers.config import FAST_OVERRIDES

SEARCHED = ("model.optimizer.lr", "model.optimizer.weight_decay", "model.net.dropout", "model.net.widths")


@pytest.mark.slow
def test_optuna_search_is_one_sweep_of_distinct_trials(synthetic_root: Path, tmp_path: Path) -> None:
    proc = run_entry_point("run", ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer.max_epochs=1",
                                   "task_name=search", f"data.root={synthetic_root}", "data.synthetic=null",
                                   f"data.cache_dir={synthetic_root.parent / 'cache'}", "test_after_fit=false",
                                   *FAST_OVERRIDES], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("lungexp").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "search optuna lr,weight_decay,dropout,widths"
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    assert trials[0].info.run_name != trials[1].info.run_name and "lr=" in trials[0].info.run_name
    assert {tuple(r.data.params[k] for k in SEARCHED) for r in trials}.__len__() == 2
    assert all(r.data.params["hparams_search"] == "optuna" for r in trials)
    (results,) = (tmp_path / "logs" / "search" / "multiruns").glob("*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    assert set(best["best_params"]) == set(SEARCHED) and 0 <= best["best_value"] <= 1
    assert parent.data.tags["best.run_id"] in {r.info.run_id for r in trials}
    assert "Sweep results: 2 runs" in proc.stdout
