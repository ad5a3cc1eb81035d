"""A real ``-m`` sweep as one thing in MLflow, and compared in the MLflow UI in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers.cli import load_script, run_entry_point
from tests.helpers.config import FAST_OVERRIDES, TINY_NETS
from tests.helpers.mlflow_ui import (
    chromium_or_skip,
    compare_page_metric,
    mlflow_page,
    mlflow_server,
    show_the_documented_comparison,
)

UI_TIMEOUT_MS = 120_000


def _as_shown(value: float) -> str:
    """A metric as the compare page prints it: 3 decimals, trailing zeros dropped (0.5, 0.446)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


@pytest.fixture(scope="module")
def sweep(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`python -m lungexp.run -m aug=none,light`: two tiny jobs, with their console output and MLflow store."""
    root = tmp_path_factory.mktemp("sweep")
    proc = run_entry_point("run", ["-m", "aug=none,light", "trainer.max_epochs=2", "task_name=sweep",
                                   f"data.root={synthetic_root}", "data.synthetic=null",
                                   f"data.cache_dir={synthetic_root.parent / 'cache'}", *FAST_OVERRIDES,
                                   *TINY_NETS["cnn3d"]], root, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lungexp")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {"root": root, "uri": uri, "client": client, "experiment": experiment, "parent": parent,
            "children": children, "stdout": proc.stdout}


@pytest.mark.slow
def test_sweep_is_one_parent_run_with_named_jobs(sweep: dict) -> None:
    parent, children, client = sweep["parent"], sweep["children"], sweep["client"]
    assert parent.info.run_name == "sweep sweep aug=none,light" and parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["sweep aug=light", "sweep aug=none"]
    assert sorted(r.data.params["aug"] for r in children) == ["light", "none"]
    assert all(r.info.status == "FINISHED" and "best/val_auroc" in r.data.metrics for r in children)
    assert sweep["experiment"].tags["mlflow.experimentKind"] == "custom_model_development"
    assert {"sweep_results.csv", "sweep_results.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    best = max(children, key=lambda r: r.data.metrics["best/val_auroc"])
    assert parent.data.tags["best.run_id"] == best.info.run_id
    assert parent.data.tags["sweep.overrides"].startswith("aug=none,light ")
    out = sweep["stdout"]
    assert "Sweep results: 2 runs" in out and "sweep aug=light" in out and "compare page:" in out
    assert "paths" not in out.split("Sweep results")[0]  # no config tree per job
    assert len(list((sweep["root"] / "logs" / "sweep" / "multiruns").glob("*/[01]"))) == 2


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.browser
def test_compare_the_sweep_in_the_mlflow_ui(sweep: dict, tmp_path: Path) -> None:
    """Through the runs table (the view the sweep printed) to the compare page, checked on the rendered page."""
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    children = sorted(sweep["children"], key=lambda r: r.info.run_name)
    view = re.search(r"this sweep's runs: (\S+)", sweep["stdout"]).group(1)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with mlflow_server(sweep["uri"], tmp_path / "mlflow-server.log") as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        address = server.wait_until_healthy()  # the browser started meanwhile
        page = mlflow_page(browser, UI_TIMEOUT_MS)
        page.goto(view.replace("http://127.0.0.1:5000", address), wait_until="commit")

        # The runs table: both jobs by name, the swept option and the best metric as columns.
        for run in children:
            expect(page.get_by_text(run.info.run_name, exact=True).first).to_be_visible()
        expect(page.get_by_text("best/val_auroc", exact=True).first).to_be_visible()
        expect(page.get_by_role("columnheader", name="aug").first).to_be_visible()
        page.screenshot(path=shots / "runs_table.png")

        page.get_by_role("checkbox").first.click()  # select all (the view lists this sweep's jobs only)
        page.get_by_role("button", name="Compare").first.click()
        expect(page.get_by_text("Comparing 2 Runs")).to_be_visible()
        # docs/sweeps.md's clicks, to each run's ROC curve side by side.
        bottom = show_the_documented_comparison(page, runs=len(children))

        names_row = page.locator("tr", has=page.get_by_text("Run Name:", exact=True)).first
        params_row = page.locator("tr", has=page.get_by_text("aug", exact=True)).first
        for run in children:
            expect(names_row).to_contain_text(run.info.run_name)
            expect(params_row).to_contain_text(run.data.params["aug"])
        shown = compare_page_metric(page, "val/auroc")
        assert sorted(shown) == sorted(_as_shown(run.data.metrics["val/auroc"]) for run in children)

        page.screenshot(path=shots / "compare.png", clip={"x": 0, "y": 0, "width": 1600, "height": bottom + 40})
        browser.close()
    print(f"\nscreenshots: {shots}")


@pytest.mark.slow
def test_the_docs_picture_shows_the_best_jobs_of_the_newest_sweep(sweep: dict) -> None:
    """scripts/docs_screenshot.py (which drives the page as the test above does) picks the sweep and its jobs, best
    first, that the table beside the picture lists."""
    screenshot = load_script("docs_screenshot")
    parent, jobs = screenshot.newest_sweep(sweep["uri"])
    assert parent.info.run_id == sweep["parent"].info.run_id
    assert [job.info.run_id for job in jobs] == [run.info.run_id for run in sorted(
        sweep["children"], key=lambda run: -run.data.metrics["best/val_auroc"])]


def test_the_docs_picture_needs_a_store_with_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    screenshot = load_script("docs_screenshot")
    assert screenshot.main([str(tmp_path / "absent.db")]) == 1
    assert f"error: {tmp_path / 'absent.db'}: no such MLflow store" in capsys.readouterr().err
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(empty).create_experiment("lungexp")
    with pytest.raises(SystemExit, match=r"holds no sweep run in experiment 'lungexp': run a `-m` sweep first"):
        screenshot.newest_sweep(empty)
