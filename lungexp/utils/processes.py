"""Worker processes that never outlive the process that started them.

A ``ProcessPoolExecutor`` worker keeps running when its parent is killed with SIGKILL (nothing in
the parent gets a chance to stop it), and every worker prints its own ``KeyboardInterrupt``
traceback on Ctrl-C. :func:`worker_pool` gives a pool whose workers die with the parent (Linux:
``prctl(PR_SET_PDEATHSIG)``), leave Ctrl-C to the parent, and whose unstarted tasks are cancelled
as soon as the parent stops iterating because of an error.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: SIGKILL this worker when its parent dies; ignore Ctrl-C (the parent handles it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if not _alive(parent_pid):  # the parent died before the request above took effect
        os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def worker_pool(max_workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers die with this process; on an error the pending tasks are cancelled.

    Workers that are mid-task finish it (each task writes its result atomically, so the work is
    kept for a resumed run) and then exit.
    """
    pool = ProcessPoolExecutor(max_workers=max_workers, initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
