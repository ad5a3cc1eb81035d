"""No zombie RUNNING runs: a run killed with SIGKILL never ends its MLflow run, so the next run does.

Every run records which process owns it (host, PID namespace, PID and the process's start time) as
tags when it is created. When a run starts, RUNNING runs of its experiment owned by a process on
the same host and PID namespace that no longer exists (or whose PID now belongs to a newer
process) are marked KILLED. Runs of live processes (a parallel sweep job, another terminal),
of other hosts and of older versions without these tags are never touched.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient

log = logging.getLogger(__name__)

HOST_TAG = "lungexp.host"
PID_NAMESPACE_TAG = "lungexp.pid_namespace"
PID_TAG = "lungexp.pid"
PROCESS_START_TAG = "lungexp.process_start"
ENDED_BY_TAG = "lungexp.ended_by"


def process_tags(pid: int | None = None) -> dict[str, str]:
    """Tags that identify process ``pid`` (default: this one) for :func:`owner_is_gone`."""
    pid = os.getpid() if pid is None else pid
    return {HOST_TAG: socket.gethostname(), PID_NAMESPACE_TAG: _pid_namespace(), PID_TAG: str(pid),
            PROCESS_START_TAG: _process_start(pid) or ""}


def _pid_namespace() -> str:
    """PIDs are only comparable inside one PID namespace (containers share host names, not PIDs)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, Linux), to tell it from a later process reusing the PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime); the name in (...) may hold spaces


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process that created a run is still running; None where this machine cannot tell (a run of
    another host or PID namespace, or of a version without these tags)."""
    here = process_tags()
    if not tags.get(PID_TAG) or (tags.get(HOST_TAG), tags.get(PID_NAMESPACE_TAG)) != (here[HOST_TAG],
                                                                                     here[PID_NAMESPACE_TAG]):
        return None
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    started = _process_start(pid)
    return not (started and tags.get(PROCESS_START_TAG) and started != tags[PROCESS_START_TAG])


def owner_is_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process that created a run is known to have ended (never true for other hosts)."""
    return owner_alive(tags) is False


def end_stale_runs(client: MlflowClient, experiment_name: str, ended_by: str = "") -> list[str]:
    """Mark KILLED every RUNNING run of ``experiment_name`` whose process is gone; returns their ids."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    ended = []
    for run in running:
        if not owner_is_gone(run.data.tags):
            continue
        note = f"process {run.data.tags[PID_TAG]} on {run.data.tags[HOST_TAG]} ended without closing the run"
        client.set_tag(run.info.run_id, ENDED_BY_TAG, f"{note}; marked KILLED {ended_by}".strip())
        client.set_terminated(run.info.run_id, status="KILLED", end_time=int(time.time() * 1000))
        log.warning("MLflow run %s (%s) was left RUNNING: %s; marked it KILLED", run.info.run_id,
                    run.info.run_name, note)
        ended.append(run.info.run_id)
    return ended
