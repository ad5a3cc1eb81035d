"""Per-scan work in several processes, or in this one, with a progress bar counting scans."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any, TypeVar

from tqdm.auto import tqdm

from lungexp.utils.processes import worker_pool

Result = TypeVar("Result")


def map_scans(
    function: Callable[[Any], Result],
    tasks: Sequence[Any],
    num_workers: int,
    description: str,
    progress: bool = True,
    done: int = 0,
) -> list[Result]:
    """``[function(task) for task in tasks]``, in order, in up to ``num_workers`` processes.

    One task per scan. With ``num_workers <= 1`` or a single task everything runs in this process
    (no start-up cost, and exceptions keep their traceback). Workers die with this process and
    leave Ctrl-C to it (:func:`~lungexp.utils.processes.worker_pool`). ``done`` counts scans finished earlier,
    e.g. by an interrupted build being resumed, so the bar shows the whole job.
    """
    with ExitStack() as stack:
        if num_workers > 1 and len(tasks) > 1:
            pool = stack.enter_context(worker_pool(min(num_workers, len(tasks))))
            results = pool.map(function, tasks)
        else:
            results = map(function, tasks)
        return list(tqdm(results, total=done + len(tasks), initial=done, desc=description, unit="scan",
                         disable=not progress))
