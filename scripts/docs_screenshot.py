"""The picture of the MLflow compare page that README.md, docs/index.md and docs/sweeps.md show: the two best jobs
of the newest sweep in an MLflow store, compared in headless Chromium after the clicks docs/sweeps.md gives (two:
MLflow 3.17.2 leaves the artifact file list no width once three or more runs are compared).

``scripts/docs_examples.py`` runs it after the sweep example, on that example's store, so that the picture and the
sweep table beside it come from the same runs. By hand: ``python scripts/docs_screenshot.py mlflow.db`` (``--out``:
where to write it, default ``docs/mlflow_compare.png``). It needs Chromium (``make browser``) and Playwright (the
dev extra); without them it says so and exits with status 3, writing nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the checkout's test helpers (the UI test drives the same page)
    sys.path.insert(0, str(ROOT))

from tests.helpers.mlflow_ui import (  # noqa: E402
    chromium,
    missing_browser,
    mlflow_page,
    mlflow_server,
    show_the_documented_comparison,
)

if TYPE_CHECKING:
    from mlflow.entities import Run

PICTURE = ROOT / "docs" / "mlflow_compare.png"
EXPERIMENT = "lungexp"
TIMEOUT_MS = 120_000
WIDTH = 1600
NOT_REMADE = 3  # the exit status without a browser (scripts/docs_examples.py goes on without the picture)
COMPARED = 2  # the most runs whose artifacts MLflow 3.17.2's compare page lets a user pick


def newest_sweep(tracking_uri: str) -> tuple[Run, list[Run]]:
    """The newest sweep run of the ``lungexp`` experiment and its jobs, best ``best/val_auroc`` first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    sweeps = [run for run in runs if "sweep.overrides" in run.data.tags]
    if not sweeps:
        raise SystemExit(f"error: {tracking_uri} holds no sweep run in experiment {EXPERIMENT!r}: run a `-m` sweep first")
    sweep = max(sweeps, key=lambda run: run.info.start_time)
    jobs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    return sweep, sorted(jobs, key=lambda run: -run.data.metrics.get("best/val_auroc", float("-inf")))


def take_picture(store: Path, out: Path) -> str:
    """Write the compare page of the best :data:`COMPARED` jobs of ``store``'s newest sweep to ``out``; returns the
    sweep's run name."""
    from playwright.sync_api import expect, sync_playwright

    tracking_uri = f"sqlite:///{store.resolve()}"
    sweep, jobs = newest_sweep(tracking_uri)
    jobs = jobs[:COMPARED]
    runs = ",".join(f'"{job.info.run_id}"' for job in jobs)
    with (tempfile.TemporaryDirectory() as scratch,
          mlflow_server(tracking_uri, Path(scratch) / "mlflow-server.log") as server, sync_playwright() as playwright):
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        address = server.wait_until_healthy()
        page = mlflow_page(browser, TIMEOUT_MS, WIDTH)
        experiment = sweep.info.experiment_id
        page.goto(f'{address}/#/compare-runs?runs=[{runs}]&experiments=["{experiment}"]', wait_until="commit")
        expect(page.get_by_text(f"Comparing {len(jobs)} Runs")).to_be_visible()
        bottom = show_the_documented_comparison(page, runs=len(jobs))
        page.mouse.move(0, 0)  # no hover highlight in the picture
        page.screenshot(path=out, clip={"x": 0, "y": 0, "width": WIDTH, "height": bottom + 40})
        browser.close()
    return sweep.info.run_name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path, help="the MLflow store (an SQLite file, e.g. mlflow.db)")
    parser.add_argument("--out", type=Path, default=PICTURE, help=f"the PNG to write (default: {PICTURE.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    if not args.store.is_file():
        print(f"error: {args.store}: no such MLflow store (give the SQLite file a sweep logged to)", file=sys.stderr)
        return 1
    if reason := missing_browser():
        print(f"{args.out} not remade: {reason}", file=sys.stderr)
        return NOT_REMADE
    name = take_picture(args.store, args.out)
    print(f"wrote {args.out}: the compare page of {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
