"""Commands that start process trees (DDP ranks, sweep launchers, servers): run with a timeout, then make
sure nothing they started is still running.

Every process the command starts inherits a marker in its environment, so its descendants are found even
when they leave its process group or session (submitit, daemons); whatever is left is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

MARKER_VARIABLE = "LUNGEXP_TEST_PROCESS_TREE"
EXIT_GRACE_S = 10  # descendants may still be exiting when the command returns


@dataclass(frozen=True)
class Finished:
    returncode: int
    output: str  # stdout and stderr
    left_behind: list[str]  # descendants still running EXIT_GRACE_S after the command ended (then killed)


def run_process_tree(command: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float) -> Finished:
    """Run ``command`` in its own session; on a timeout kill every process it started and fail."""
    marker = uuid.uuid4().hex
    process = subprocess.Popen(list(command), cwd=cwd, env={**env, MARKER_VARIABLE: marker}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_marked(marker)
        output, _ = process.communicate()
        raise AssertionError(f"{command[:4]} ran past {timeout} s; ended it:\n{output[-6000:]}") from None
    left = _wait_for_marked(marker)
    kill_marked(marker)
    return Finished(process.returncode, output, [_describe(p) for p in left])


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline()[:6])}"
    except psutil.Error:
        return f"{process.pid} (ended meanwhile)"


def marked_processes(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get(MARKER_VARIABLE) == marker:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_marked(marker: str) -> None:
    processes = marked_processes(marker)
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


def _wait_for_marked(marker: str) -> list[psutil.Process]:
    deadline = time.monotonic() + EXIT_GRACE_S
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left
