"""Which hardware a ``trainer`` config lands on, and the settings that only work on some of it.

fp16 (``trainer.precision=16-mixed``) and SyncBatchNorm need CUDA. A precision that cannot run is refused
before any slow work (:func:`lungexp.config.schema.check_precision`); SyncBatchNorm, which ``trainer=ddp``
asks for, is switched off where it cannot work (:func:`supported_trainer`), so the same ``trainer=ddp``
trains on GPUs and, for a test, on CPU processes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from lungexp.utils.dictconfig import with_values

log = logging.getLogger(__name__)

# Lightning's names for fp16 ("16" is the old spelling of "16-mixed").
FP16_PRECISIONS = ("16-mixed", "16", "16-true")


def selects_cuda(trainer: Mapping[str, Any]) -> bool:
    """Whether ``trainer.accelerator`` resolves to CUDA GPUs on this machine (``auto`` does when one exists)."""
    from pytorch_lightning.accelerators import CUDAAccelerator

    accelerator = str(trainer.get("accelerator", "auto")).lower()
    return accelerator in ("auto", "gpu", "cuda") and CUDAAccelerator.is_available()


def supported_trainer(trainer: DictConfig) -> DictConfig:
    """``trainer`` as it runs here: a copy with ``sync_batchnorm`` off unless the run uses CUDA (torch's
    SyncBatchNorm only runs there); ``trainer`` itself is left as composed. What is logged to MLflow says
    what ran."""
    if trainer.get("sync_batchnorm") and not selects_cuda(trainer):
        return with_values(trainer, {"sync_batchnorm": False})
    return trainer


def log_unsupported(trainer: DictConfig) -> None:
    """Say which of ``trainer``'s settings :func:`supported_trainer` switches off here."""
    if trainer.get("sync_batchnorm") and not selects_cuda(trainer):
        log.info("trainer.sync_batchnorm=true needs CUDA GPUs (accelerator=%s here): each process keeps its own "
                 "BatchNorm statistics", trainer.get("accelerator"))
