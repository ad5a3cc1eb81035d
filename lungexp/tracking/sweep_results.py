"""The results of a sweep, from its nested MLflow runs: a table (CSV, PNG, console, run description)
and the best child, all logged to the sweep's parent run.

The test metric is shown with its 95 % interval (``0.845 [0.801, 0.889]``) when the jobs logged one, and
``not_worse`` marks every job whose test AUROC is not significantly below the best job's (DeLong's paired
test on their test predictions, Holm across the jobs; :mod:`lungexp.metrics.comparison`)."""

from __future__ import annotations

import json
import logging
import tempfile
import urllib.parse
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from lungexp.metrics.bootstrap import CI_HIGH, CI_LOW
from lungexp.metrics.comparison import align, not_worse_than_best
from lungexp.tracking.callback import best_metric_name
from lungexp.tracking.run_predictions import scored_run
from lungexp.tracking.runs import short_keys, short_value
from lungexp.utils.errors import LungexpError

log = logging.getLogger(__name__)

RESULTS_NAME = "sweep_results"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (markdown)
# An experiment tag MLflow's UI reads a shared runs-table view from (`?viewStateShareKey=KEY`); it is
# what the UI's own "share view" writes: the table's filter, sort order and columns as JSON.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
UI_ADDRESS = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves the UI (MLFLOW_PORT changes the port)


def sweep_results(client: MlflowClient, experiment_id: str, parent_run_id: str, keys: list[str], metric: str,
                  mode: str = "max") -> pd.DataFrame:
    """One row per job: run name, the swept values (as logged params), the best value of ``metric`` and
    its epoch, the matching test metric, status and run id; best first."""
    runs = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
                              max_results=10_000)
    best, test = best_metric_name(metric), metric.replace("val/", "test/", 1)
    names = short_keys(keys)
    rows = []
    for run in runs:
        row = {"run": run.info.run_name, **{names[k]: run.data.params.get(k) for k in keys},
               best: run.data.metrics.get(best), "best/epoch": run.data.metrics.get("best/epoch")}
        if test != metric:
            row.update({name: run.data.metrics.get(name) for name in (test, test + CI_LOW, test + CI_HIGH)})
        rows.append({**row, "status": run.info.status, "run_id": run.info.run_id})
    tests = [test, test + CI_LOW, test + CI_HIGH] if test != metric else []
    table = pd.DataFrame(rows, columns=["run", *names.values(), best, "best/epoch", *tests, "status", "run_id"])
    table["best/epoch"] = table["best/epoch"].astype("Int64")
    return table.sort_values(best, ascending=mode == "min", na_position="last").reset_index(drop=True)


def results_figure(table: pd.DataFrame, metric_column: str, title: str) -> Figure:
    """Horizontal bars of the optimised metric per run, best on top and highlighted."""
    shown = table.dropna(subset=[metric_column]).iloc[::-1]
    fig = Figure(figsize=(7, 0.45 * max(len(shown), 2) + 1.2), layout="constrained")
    ax = fig.subplots()
    colors = ["#c0c0c0"] * (len(shown) - 1) + ["#1f77b4"] if len(shown) else []
    bars = ax.barh(shown["run"], shown[metric_column], color=colors)
    ax.bar_label(bars, fmt="%.3f", padding=3)
    ax.set(xlabel=metric_column, title=title, xlim=(0, max(1.0, float(shown[metric_column].max() or 1)) * 1.12))
    ax.grid(axis="x", alpha=0.3)
    return fig


def not_worse_column(client: MlflowClient, table: pd.DataFrame) -> pd.Series | None:
    """Per finished job, whether its test AUROC is not significantly below that of the best one (the first
    finished job of the table, sorted by ``best``); ``None`` (with a warning) when the jobs' test predictions
    cannot be compared. A cross-validation job brings its pooled test predictions."""
    finished = table.index[table["status"].eq("FINISHED")]
    if len(finished) < 2:
        return None
    try:
        aligned = align([scored_run(client, table.at[row, "run_id"]) for row in finished])
        verdict = not_worse_than_best(aligned, best=0)
    except (LungexpError, ValueError) as error:
        log.warning("sweep results: no significance column: %s", error)
        return None
    return pd.Series(pd.array(verdict, dtype="boolean"), index=finished).reindex(table.index)


def _cell(value: object) -> str:
    if pd.isna(value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.4f}" if isinstance(value, float) else short_value(str(value))


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text cells, each test metric with its interval in one cell (``0.845 [0.801, 0.889]``)."""
    shown = table.drop(columns="run_id").astype(object).map(_cell)
    for low in [column for column in table.columns if column.endswith(CI_LOW)]:
        name, high = low.removesuffix(CI_LOW), low.removesuffix(CI_LOW) + CI_HIGH
        has = table[low].notna() & table[high].notna() & table[name].notna()
        shown.loc[has, name] = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in
                                zip(table.loc[has, name], table.loc[has, low], table.loc[has, high], strict=True)]
        shown = shown.drop(columns=[low, high])
    return shown


def markdown_table(table: pd.DataFrame) -> str:
    """The table as markdown, for the parent run's description."""
    shown = shown_table(table)
    lines = ["| " + " | ".join(map(str, shown.columns)) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


def print_results(table: pd.DataFrame, title: str) -> None:
    """Plain text, so it reads the same in a terminal and in a log file."""
    print(f"\n{title}\n{shown_table(table).to_string(index=False)}")


def share_sweep_view(client: MlflowClient, experiment_id: str, parent_run_id: str, keys: list[str],
                     metric: str, mode: str) -> str:
    """Save a runs-table view of this sweep's jobs (best first; the swept params and the best, epoch
    and test metrics as columns) and return its address in the UI."""
    best, test = best_metric_name(metric), metric.replace("val/", "test/", 1)
    metrics = [best, "best/epoch", *([test] if test != metric else [])]
    view = {"searchFilter": f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
            "orderByKey": f"metrics.`{best}`", "orderByAsc": mode == "min", "startTime": "ALL",
            "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": [*(f"params.`{k}`" for k in keys), *(f"metrics.`{m}`" for m in metrics)]}
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + parent_run_id, json.dumps(view))
    return (f"{UI_ADDRESS}/#/experiments/{experiment_id}/runs?viewStateShareKey={parent_run_id}"
            "&workflowType=machine_learning")


def compare_address(experiment_id: str, run_ids: list[str]) -> str:
    """The UI's compare page for ``run_ids`` (what *Compare* on selected runs opens)."""
    quote = urllib.parse.quote
    return (f"{UI_ADDRESS}/#/compare-runs?runs={quote(json.dumps(run_ids, separators=(',', ':')))}"
            f"&experiments={quote(json.dumps([experiment_id]))}")


def report_sweep(client: MlflowClient, experiment_id: str, run_id: str, keys: list[str], metric: str, mode: str,
                 tracking_uri: str) -> pd.DataFrame:
    """Log the results table and best child to the sweep's parent run and print the table."""
    table = sweep_results(client, experiment_id, run_id, keys, metric, mode)
    best = best_metric_name(metric)
    not_worse = not_worse_column(client, table)
    if not_worse is not None:
        table.insert(table.columns.get_loc("status"), "not_worse", not_worse)
    title = f"Sweep results: {len(table)} runs, sorted by {best}"
    with tempfile.TemporaryDirectory() as folder:
        csv = Path(folder) / f"{RESULTS_NAME}.csv"
        table.to_csv(csv, index=False)
        client.log_artifact(run_id, str(csv))
    client.log_figure(run_id, results_figure(table, best, f"{len(table)} runs of the sweep"), f"{RESULTS_NAME}.png")
    client.set_tag(run_id, NOTE_TAG, f"**{title}**\n\n" + markdown_table(table))
    winner = table.dropna(subset=[best]).head(1)
    if not winner.empty:
        client.set_tag(run_id, "best.run_id", winner["run_id"].iloc[0])
        client.set_tag(run_id, "best.run_name", winner["run"].iloc[0])
        client.log_metric(run_id, best, float(winner[best].iloc[0]))
    view = share_sweep_view(client, experiment_id, run_id, keys, metric, mode)
    print_results(table, title)
    if not winner.empty:
        print(f"Best: {winner['run'].iloc[0]}  ({best} = {winner[best].iloc[0]:.4f}, run {winner['run_id'].iloc[0]})")
    print(f"MLflow sweep run {run_id} in {tracking_uri}; after `make mlflow-ui`:\n"
          f"  this sweep's runs: {view}\n  compare page:      {compare_address(experiment_id, list(table['run_id']))}")
    return table
