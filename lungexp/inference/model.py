"""A trained network ready for inference: its checkpoint, device, precision and batched probabilities."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from lungexp.data.names import COVARIATES_KEY, IMAGE_KEY
from lungexp.data.patches.normalization import HUWindow
from lungexp.evaluation.head_report import is_one_logit
from lungexp.evaluation.operating_point import OperatingPoint
from lungexp.models.fusion import network_inputs
from lungexp.models.heads import head_outputs, target_probabilities
from lungexp.training.checkpoint import ModelRecipe, load_checkpoint
from lungexp.utils.errors import ConfigError, LungexpError, look_up_option

# A batch as inference hands it to a model: the normalised patches (IMAGE_KEY) and, for a model with covariates,
# their covariates as read (COVARIATES_KEY), as the training batches of lungexp.data.loading carry them.
Batch = Mapping[str, torch.Tensor]

# Lightning precision names -> the autocast dtype its test loop runs under (none for full precision).
_AUTOCAST = {"32-true": None, "32": None, "64-true": None, "bf16-mixed": torch.bfloat16,
             "bf16-true": torch.bfloat16, "16-mixed": torch.float16, "16-true": torch.float16}


class Predictor:
    """Nodule probabilities from a lungexp checkpoint, computed as its training test stage did.

    Args:
        ckpt_path: a checkpoint written by ``python -m lungexp.run``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        precision: a Lightning precision name, or None for the one the checkpoint was trained with.
        calibration: ``none``, ``temperature`` or ``isotonic`` (see :meth:`calibrate`).
    """

    def __init__(self, ckpt_path: str | Path, device: str = "auto", precision: str | None = None,
                 calibration: str = "none") -> None:
        trained = load_checkpoint(ckpt_path)
        self.recipe: ModelRecipe = trained.recipe
        self.path = trained.path
        self.device = inference_device(device)
        self.precision = str(precision or self.recipe.precision)
        self.autocast_dtype = _AUTOCAST[look_up_option("precision", self.precision, _AUTOCAST)]
        if self.autocast_dtype is torch.float16 and self.device.type != "cuda":
            raise ConfigError(f"precision={self.precision} needs a CUDA device (got {self.device}); "
                              "pass precision=32-true or bf16-mixed")
        self.net = trained.net.to(self.device)
        self.evaluation = trained.evaluation
        self.validation_predictions = trained.validation_predictions
        self._stored_calibration = trained.calibration
        self.calibrate(calibration)

    def calibrate(self, method: str, key: str = "calibration") -> None:
        """Calibrate :meth:`patch_probabilities` and the decision threshold of :attr:`operating_point` with
        ``method``: the calibrator the checkpoint stores when it was trained with that ``eval.calibration``, else
        one fitted on its validation predictions (the same fit). Messages name ``key``, the option that chose
        ``method`` (``calibration`` of predict and register, ``eval.calibration`` of evaluate)."""
        self.operating_point = OperatingPoint.fit(self.validation_predictions, method, key,
                                                  stored=self._stored_calibration,
                                                  source=f"{self.path} (its stored calibration)",
                                                  head=self.recipe.targets.primary)

    @torch.inference_mode()
    def batch_probabilities(self, images: torch.Tensor | None, covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Sigmoid of the logit of each patch of one normalised ``(B, C, D, H, W)`` batch (float32, on CPU; a target of
        other heads: ``(B, columns)``, each head's probabilities, :func:`~lungexp.models.heads.target_probabilities`), with the
        ``(B, k)`` covariates of its samples for a model that reads them (:attr:`ModelRecipe.covariates`); ``images``
        None for a model that reads none (:attr:`ModelRecipe.images`)."""
        read = {"covariates": bool(self.recipe.covariates), "images": self.recipe.images}
        given = {"covariates": covariates is not None, "images": images is not None}
        for name in (name for name in read if read[name] != given[name]):
            what = f"the covariates {list(self.recipe.covariates)}" if name == "covariates" else name
            raise LungexpError(f"{self.path} reads {what if read[name] else 'no ' + name}, but its input "
                               f"{'lacks' if read[name] else 'has'} them")
        inputs = network_inputs(None if images is None else images.to(self.device),
                                None if covariates is None else covariates.to(self.device))
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            logits = self.net(*inputs)
        target = self.recipe.targets
        if is_one_logit(target):
            return torch.sigmoid(logits.squeeze(-1).float()).cpu()
        return target_probabilities(logits.float(), [head.kind for head in target.heads],
                                    [head_outputs(head.kind, head.num_classes) for head in target.heads]).cpu()

    def probabilities(self, batches: Iterable[Batch]) -> np.ndarray:
        """:meth:`batch_probabilities` of each batch, concatenated (float32), not calibrated."""
        outputs = [self.batch_probabilities(batch.get(IMAGE_KEY), batch.get(COVARIATES_KEY)) for batch in batches]
        return torch.cat(outputs).numpy() if outputs else np.zeros(0, dtype=np.float32)

    def patch_probabilities(self, hu_patches: np.ndarray | None, batch_size: int = 64,
                            covariates: np.ndarray | None = None) -> np.ndarray:
        """Probabilities of raw HU patches ``(N, C, D, H, W)`` (with their ``(N, k)`` covariates for a model that
        reads them; for one that reads no image, ``None`` and the covariates), normalised with the checkpoint's window
        and calibrated by :attr:`operating_point`."""
        probabilities = self.probabilities(normalized_batches(self.recipe.window, hu_patches, batch_size, covariates))
        return self.operating_point.apply(probabilities).astype(np.float32, copy=False)


def inference_device(device: str) -> torch.device:
    """The torch device of the ``device`` option: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N``; a :class:`ConfigError` naming the option for a device this machine does not have."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r} is not a device lungexp runs on; use auto, cpu, cuda or cuda:N")
    gpus = torch.cuda.device_count() if chosen.type == "cuda" and torch.cuda.is_available() else 0
    if chosen.type == "cuda" and not gpus:
        raise ConfigError(f"device={device}: this machine has no CUDA GPU that PyTorch can use; use device=cpu, or "
                          "device=auto (a GPU where there is one)")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= gpus:
        raise ConfigError(f"device={device}: this machine has {gpus} CUDA GPU(s), cuda:0 to cuda:{gpus - 1}")
    return chosen


def normalized_batches(window: HUWindow, hu_patches: np.ndarray | None, batch_size: int,
                       covariates: np.ndarray | None = None) -> Iterator[Batch]:
    """Batches of HU patches normalised per patch, as the training dataset does (zscore is per patch), with the
    ``covariates`` of their samples when given (``(N, k)``, as read: the model standardises them); without patches
    (a model that reads no image), of the covariates alone."""
    count = len(hu_patches) if hu_patches is not None else len(covariates) if covariates is not None else 0
    for start in range(0, count, batch_size):
        batch = {}
        if hu_patches is not None:
            batch[IMAGE_KEY] = torch.stack([window(patch) for patch in hu_patches[start:start + batch_size]])
        if covariates is not None:
            batch[COVARIATES_KEY] = torch.as_tensor(np.asarray(covariates[start:start + batch_size], np.float32))
        yield batch
