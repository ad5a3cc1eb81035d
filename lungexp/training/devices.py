"""Which hardware a ``trainer`` config lands on, and the settings that only work on some of it.

fp16 (``trainer.precision=16-mixed``) and SyncBatchNorm need CUDA. A precision that cannot run is a
:class:`~lungexp.utils.errors.ConfigError` before any slow work (:func:`check_precision`, called by
:func:`lungexp.utils.checks.check_config`); SyncBatchNorm, which ``trainer=ddp`` asks for, is switched
off with a log line where it cannot work (:func:`drop_unsupported_sync_batchnorm`), so the same
``trainer=ddp`` trains on GPUs and, for a test, on CPU processes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, open_dict

from lungexp.utils.errors import ConfigError

log = logging.getLogger(__name__)

# Lightning's names for fp16 ("16" is the old spelling of "16-mixed").
FP16_PRECISIONS = ("16-mixed", "16", "16-true")


def selects_cuda(trainer: Mapping[str, Any]) -> bool:
    """Whether ``trainer.accelerator`` resolves to CUDA GPUs on this machine (``auto`` does when one exists)."""
    from pytorch_lightning.accelerators import CUDAAccelerator

    accelerator = str(trainer.get("accelerator", "auto")).lower()
    return accelerator in ("auto", "gpu", "cuda") and CUDAAccelerator.is_available()


def check_precision(trainer: Mapping[str, Any]) -> None:
    """fp16 only on CUDA: Lightning would start it on CPU too, where fp16 convolutions are slow or missing."""
    precision = str(trainer.get("precision", "32-true"))
    if precision in FP16_PRECISIONS and not selects_cuda(trainer):
        where = (f"trainer.accelerator={trainer.get('accelerator')}" if trainer.get("accelerator") != "auto"
                 else "no CUDA GPU here (trainer.accelerator=auto picks the CPU)")
        raise ConfigError(f"trainer.precision={precision} (fp16) needs a CUDA GPU, but {where}; use "
                          "trainer.precision=bf16-mixed or 32-true, or run on a GPU (trainer=gpu)")


def drop_unsupported_sync_batchnorm(cfg: DictConfig) -> None:
    """``trainer.sync_batchnorm`` off, with a log line, unless the run uses CUDA (torch's SyncBatchNorm
    only runs there); what is logged to MLflow then says what ran."""
    if cfg.trainer.get("sync_batchnorm") and not selects_cuda(cfg.trainer):
        log.info("trainer.sync_batchnorm=true needs CUDA GPUs (accelerator=%s here): each process keeps its own "
                 "BatchNorm statistics", cfg.trainer.get("accelerator"))
        with open_dict(cfg):
            cfg.trainer.sync_batchnorm = False
