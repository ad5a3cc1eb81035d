"""Strict loading of pretrained backbone weights from a checkpoint file on disk (nothing is downloaded).

Accepted files:

* ``medicalnet``: Tencent MedicalNet releases (``resnet_10.pth``, ``resnet_18.pth``, ...): a dict with
  ``state_dict`` whose keys carry DataParallel's ``module.`` prefix; its segmentation decoder
  (``conv_seg.*``) is dropped.
* ``lightning``: a ``.ckpt`` written by this project's LightningModule (network stored as ``self.net``,
  so keys are ``net.*``; other module state such as loss buffers is ignored). Of a model with covariates
  (:class:`~lungexp.models.fusion.CovariateFusion`, keys ``net.image.*``), its image network.
* ``state_dict``: a plain mapping of tensors (``module.`` prefix tolerated).

The classifier head is never taken from the file: it is task-specific and stays freshly initialised.
Everything else must match exactly; a silent partial load would make a "pretrained" run quietly train
from scratch, so any missing, unexpected or mis-shaped backbone tensor raises one
:class:`PretrainedWeightsError` listing them all. The single tolerated gap is BatchNorm's
``num_batches_tracked`` counter (bookkeeping, absent from pre-0.4.1 checkpoints), which keeps its value.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lungexp.models.fusion import IMAGE_NETWORK
from lungexp.utils.digests import file_sha256
from lungexp.utils.errors import LungexpError, look_up_option

logger = logging.getLogger(__name__)

CheckpointFormat = Literal["auto", "medicalnet", "lightning", "state_dict"]
CHECKPOINT_FORMATS: tuple[str, ...] = ("medicalnet", "lightning", "state_dict")

HEAD_PREFIXES: tuple[str, ...] = ("head.", "conv_seg.", "fc.")
"""Top-level key prefixes of classifier/decoder heads in files: ours, MedicalNet's decoder, torchvision-style."""

OPTIONAL_SUFFIX = "num_batches_tracked"
MAX_LISTED_KEYS = 20


class PretrainedWeightsError(LungexpError):
    """A checkpoint file cannot be used as pretrained weights for the configured network."""


@dataclass(frozen=True)
class PretrainedReport:
    """What was loaded from where, for logging and for MLflow params (see :meth:`as_params`).

    ``sha256`` is the file's verified hash when one was configured, else ``None``: hashing costs about a
    second per 400 MB, so it is done only when asked for.
    """

    path: str
    format: str
    sha256: str | None
    loaded: int
    fresh: int
    fresh_keys: tuple[str, ...]

    def as_params(self) -> dict[str, str | int]:
        params: dict[str, str | int] = {"pretrained.path": self.path, "pretrained.format": self.format}
        if self.sha256 is not None:
            params["pretrained.sha256"] = self.sha256
        return {**params, "pretrained.loaded_tensors": self.loaded, "pretrained.fresh_tensors": self.fresh}


def load_pretrained(
    net: nn.Module,
    path: str | os.PathLike[str],
    format: CheckpointFormat = "auto",
    sha256: str | None = None,
) -> PretrainedReport:
    """Load every backbone tensor of ``net`` from ``path``; the ``head`` stays freshly initialised.

    The stem convolution (``net.stem_conv``) is adapted when only its input channels differ:
    1 → C repeats the kernel over channels and divides by C (a C-fold replicated input then gives the
    original response); C → 1 averages over channels.

    Raises:
        ConfigError: ``format`` is not one of the formats above.
        PretrainedWeightsError: file missing, sha256 mismatch, truncated/corrupt file or unsafe pickle,
            unknown layout, or backbone tensors missing/unexpected/mis-shaped (all listed in one message).

    The file is hashed only when ``sha256`` is given (see :class:`PretrainedReport`).
    """
    look_up_option("model.pretrained.format", format, ["auto", *CHECKPOINT_FORMATS])
    file = Path(path).expanduser()
    if not file.is_file():
        raise PretrainedWeightsError(f"{file}: pretrained weights file not found; check model.pretrained.path "
                                     "(nothing is ever downloaded)")
    verified_sha256 = None
    if sha256 is not None:
        verified_sha256 = file_sha256(file)
        if verified_sha256 != sha256.strip().lower():
            raise PretrainedWeightsError(
                f"sha256 mismatch for pretrained weights {file}: expected {sha256}, actual {verified_sha256}"
            )

    checkpoint = _read_checkpoint(file)
    resolved_format = detect_format(checkpoint, file) if format == "auto" else format
    file_tensors = _extract_tensors(checkpoint, resolved_format, file)
    backbone = {key: value for key, value in net.state_dict().items() if not key.startswith("head.")}
    file_tensors = _adapt_stem(file_tensors, _stem_weight_key(net), backbone, file)
    _check_matches_backbone(file_tensors, backbone, net, file, resolved_format)

    net.load_state_dict(file_tensors, strict=False)
    fresh_keys = tuple(key for key in net.state_dict() if key not in file_tensors)
    report = PretrainedReport(
        path=str(file),
        format=resolved_format,
        sha256=verified_sha256,
        loaded=len(file_tensors),
        fresh=len(fresh_keys),
        fresh_keys=fresh_keys,
    )
    logger.info(
        "Loaded %d pretrained tensors into %s from %s (format %s%s); %d stay freshly initialised: %s",
        report.loaded,
        type(net).__name__,
        file,
        resolved_format,
        f", sha256 {verified_sha256[:12]} verified" if verified_sha256 else "",
        report.fresh,
        ", ".join(fresh_keys),
    )
    return report


def detect_format(checkpoint: Any, path: Path) -> str:
    """``lightning`` for our ``.ckpt`` (``net.*`` keys), ``medicalnet`` for other ``{"state_dict": ...}``
    containers, ``state_dict`` for a bare mapping of tensors."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        keys = checkpoint["state_dict"].keys()
        if "pytorch-lightning_version" in checkpoint or any(str(key).startswith("net.") for key in keys):
            return "lightning"
        return "medicalnet"
    if _is_tensor_mapping(checkpoint):
        return "state_dict"
    raise PretrainedWeightsError(
        f"Cannot recognise the checkpoint layout of {path}: expected a dict with 'state_dict' (MedicalNet, "
        f"Lightning) or a mapping of tensors; got {type(checkpoint).__name__}"
        + (f" with keys {_preview(list(checkpoint))}" if isinstance(checkpoint, Mapping) else "")
    )


def _read_checkpoint(path: Path) -> Any:
    """``weights_only=True``: a checkpoint is data, and unpickling arbitrary objects would run their code.

    Torch's own message for a refused object recommends ``weights_only=False`` or allow-listing the
    object, i.e. running the file's code; only the object's name is kept from it.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  a damaged file makes torch.load raise almost anything
        culprit = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if isinstance(error, pickle.UnpicklingError) and culprit:
            raise PretrainedWeightsError(
                f"Refusing to load {path}: it contains objects other than tensors and plain containers, "
                f"which torch.load(weights_only=True) does not unpickle ({culprit[1]}). "
                "Re-save just the network's state dict (torch.save(net.state_dict(), path)) from a trusted copy."
            ) from None
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
        raise PretrainedWeightsError(
            f"{path}: not a readable PyTorch checkpoint ({reason}); it is probably truncated, corrupt or not a "
            "checkpoint at all: check model.pretrained.path, or copy the file again"
        ) from None


def _is_tensor_mapping(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _extract_tensors(checkpoint: Any, checkpoint_format: str, path: Path) -> dict[str, torch.Tensor]:
    """The file's backbone tensors under the network's own key names (prefixes stripped, heads dropped)."""
    if checkpoint_format == "state_dict":
        raw, prefix = checkpoint, "module."
    else:
        raw = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
        prefix = "net." if checkpoint_format == "lightning" else "module."
    if not _is_tensor_mapping(raw):
        raise PretrainedWeightsError(
            f"{path} is not a {checkpoint_format!r} checkpoint: no non-empty mapping of tensors "
            f"{'at the top level' if checkpoint_format == 'state_dict' else 'under state_dict'}"
        )
    if checkpoint_format == "lightning":
        # Only the network: the LightningModule may also hold loss buffers or metric state.
        raw = {key: value for key, value in raw.items() if key.startswith(prefix)}
        if not raw:
            raise PretrainedWeightsError(f"{path}: Lightning checkpoint without 'net.*' keys")
        fused = f"{prefix}{IMAGE_NETWORK}."
        if any(key.startswith(fused) for key in raw):  # a model with covariates: its image network
            raw, prefix = {key: value for key, value in raw.items() if key.startswith(fused)}, fused
    tensors = {key.removeprefix(prefix): value for key, value in raw.items()}
    dropped = [key for key in tensors if key.startswith(HEAD_PREFIXES)]
    if dropped:
        logger.info("Ignoring %d head/decoder tensors of %s (%s...)", len(dropped), path, dropped[0])
    return {key: value for key, value in tensors.items() if not key.startswith(HEAD_PREFIXES)}


def _stem_weight_key(net: nn.Module) -> str | None:
    """State-dict key of the stem conv weight: ``net.stem_conv`` if defined, else the first Conv3d."""
    stem = getattr(net, "stem_conv", None)
    for name, module in net.named_modules():
        if module is stem or (stem is None and isinstance(module, nn.Conv3d)):
            return f"{name}.weight"
    return None


def _adapt_stem(
    tensors: dict[str, torch.Tensor], stem_key: str | None, backbone: Mapping[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    if stem_key is None or stem_key not in tensors or stem_key not in backbone:
        return tensors
    weight, target = tensors[stem_key], backbone[stem_key]
    file_channels, net_channels = weight.shape[1], target.shape[1]
    only_channels_differ = (
        weight.ndim == target.ndim == 5
        and file_channels != net_channels
        and weight.shape[0] == target.shape[0]
        and weight.shape[2:] == target.shape[2:]
    )
    if not only_channels_differ:
        return tensors
    if file_channels == 1:
        adapted = weight.repeat(1, net_channels, 1, 1, 1) / net_channels
    elif net_channels == 1:
        adapted = weight.mean(dim=1, keepdim=True)
    else:
        return tensors  # C -> C' has no principled mapping: reported as mis-shaped
    logger.info(
        "Adapted stem %s of %s from %d to %d input channels", stem_key, path, file_channels, net_channels
    )
    return {**tensors, stem_key: adapted}


def _check_matches_backbone(
    tensors: Mapping[str, torch.Tensor],
    backbone: Mapping[str, torch.Tensor],
    net: nn.Module,
    path: Path,
    checkpoint_format: str,
) -> None:
    missing = [key for key in backbone if key not in tensors and not key.endswith(OPTIONAL_SUFFIX)]
    unexpected = [key for key in tensors if key not in backbone]
    misshaped = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(backbone[key].shape)}"
        for key, value in tensors.items()
        if key in backbone and value.shape != backbone[key].shape
    ]
    if not (missing or unexpected or misshaped):
        return
    sections = [
        f"  {title} ({len(keys)}):{_listing(keys)}"
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped))
        if keys
    ]
    raise PretrainedWeightsError(
        f"Pretrained weights {path} (format {checkpoint_format}) do not fit the {type(net).__name__} backbone "
        f"({len(backbone)} tensors expected, {len(tensors)} in the file without head keys):\n"
        + "\n".join(sections)
        + "\nCheck depth / shortcut_type / widths / in_channels against the checkpoint "
        "(MedicalNet: resnet_10 and resnet_50 use shortcut B, resnet_18 and resnet_34 shortcut A)."
    )


def _listing(keys: list[str]) -> str:
    shown = "".join(f"\n    {key}" for key in keys[:MAX_LISTED_KEYS])
    hidden = len(keys) - MAX_LISTED_KEYS
    return shown + (f"\n    ... and {hidden} more" if hidden > 0 else "")


def _preview(keys: list[Any]) -> str:
    return ", ".join(map(str, keys[:MAX_LISTED_KEYS])) + (" ..." if len(keys) > MAX_LISTED_KEYS else "")
