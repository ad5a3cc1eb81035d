"""The processes of a multi-process (DDP) training: which one speaks, and how a sweep job starts the others.

Where the processes come from:

- ``python -m lungexp.run trainer=ddp``: Lightning's ``ddp`` strategy starts ranks 1..N-1 itself by
  running the command again with ``LOCAL_RANK`` set (``_SubprocessScriptLauncher``; under Hydra
  ``python -m lungexp.run <sys.argv[1:]> hydra.run.dir=<run dir> hydra.output_subdir=null``).
- ``torchrun`` and SLURM (``srun``, or Hydra's submitit launcher) start every rank; Lightning's
  ``TorchElasticEnvironment`` / ``SLURMEnvironment`` read the ranks from their variables.

In a Hydra ``-m`` sweep ``sys.argv`` is the whole sweep, so with the first form every rank would run
every job (lightning-hydra-template #393; Lightning's fix #11617 was reverted, #18175 never merged).
:func:`sweep_job_ranks` hands Lightning's launcher this job's own command while the job trains -- its
overrides and its output folder -- and afterwards waits for those ranks, ends the process group and
restores the environment variables the launcher set, so the next job starts its own ranks.

Why not ``strategy=ddp_spawn`` (what the template suggests): it pickles the Trainer, model,
datamodule and loggers into fresh processes for every ``fit`` and ``test`` and hands back only part
of rank 0's state (not the best score, the callbacks' state or the module's test predictions), and
Lightning recommends it only where ``ddp`` cannot run. ``ddp_fork``/``ddp_notebook`` fork a process
that already runs MLflow's and DataLoader threads, and cannot fork after CUDA has started.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import pytorch_lightning as pl
import torch.distributed
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.utilities import rank_zero_only

from lungexp.utils.errors import ConfigError

log = logging.getLogger(__name__)

CHILD_EXIT_TIMEOUT_S = 300  # ranks > 0 finish right after rank 0; a rank still running by then is stuck


def is_rank_zero() -> bool:
    """Whether this process is rank 0 (Lightning's rank: from ``RANK``, ``LOCAL_RANK`` or ``SLURM_PROCID``
    at start, then the trainer's global rank)."""
    return rank_zero_only.rank == 0  # type: ignore[attr-defined]  # Lightning sets it on the function


def quiet_other_ranks() -> None:
    """Console logging of ranks > 0 to warnings only: rank 0 speaks for the run (each rank's full log
    stays in its Hydra log file)."""
    if is_rank_zero():
        return
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # not the FileHandler subclass
            handler.setLevel(logging.WARNING)


def starts_own_ranks(trainer: pl.Trainer) -> bool:
    """Whether fitting with ``trainer`` starts ranks 1..N-1 by re-running the command (Lightning's ``ddp``
    without torchrun or SLURM)."""
    launcher = trainer.strategy.launcher
    return (isinstance(launcher, _SubprocessScriptLauncher)
            and not launcher.cluster_environment.creates_processes_externally)


@contextmanager
def sweep_job_ranks(trainer: pl.Trainer) -> Iterator[None]:
    """Inside a ``-m`` sweep job whose trainer starts its own ranks: they run this job only (see the module
    doc). Elsewhere a no-op."""
    if not (_in_sweep() and starts_own_ranks(trainer)):
        yield
        return
    _check_relaunchable()
    hydra = HydraConfig.get()  # Hydra sets it anew for every job
    argv, environ = list(sys.argv), dict(os.environ)
    sys.argv = [sys.argv[0], *hydra.overrides.task]
    with read_write(hydra.run):  # type: ignore[arg-type]  # typed as the HydraConf dataclass, is a DictConfig
        hydra.run.dir = hydra.runtime.output_dir  # Lightning passes it on as hydra.run.dir
    launcher = cast(_SubprocessScriptLauncher, trainer.strategy.launcher)  # as starts_own_ranks checked
    try:
        yield
    except BaseException:
        # Ranks waiting for this one in a collective would wait until its timeout (30 min): end them. Lightning's
        # process observer then ends this process too, so a failed DDP job stops the sweep.
        _end(launcher.procs)
        raise
    finally:
        _wait(launcher.procs)  # the list the launcher filled in fit
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)  # LOCAL_RANK, MASTER_PORT, ... would make the next job wait for ranks it never starts


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _check_relaunchable() -> None:
    """Lightning re-runs ``__main__``; under a launcher that runs jobs in its own worker processes (joblib,
    submitit) that is the launcher's worker, not lungexp."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None and not spec.name.startswith("lungexp."):
        raise ConfigError(
            f"trainer.strategy=ddp starts its other processes by re-running the command, but this sweep's jobs run "
            f"inside {spec.name} (hydra/launcher={HydraConfig.get().runtime.choices.get('hydra/launcher')}); use the "
            "default launcher, or let the cluster start one process per device: hydra/launcher=submitit_slurm "
            "hydra.launcher.tasks_per_node=N with trainer.devices=N")


def _end(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()


def _wait(children: list[subprocess.Popen]) -> None:
    for child in children:
        try:
            child.wait(timeout=CHILD_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("rank process %d still runs %d s after rank 0 finished: ending it", child.pid,
                        CHILD_EXIT_TIMEOUT_S)
            child.kill()
            child.wait()
