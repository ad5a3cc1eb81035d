"""Every ``data.*`` option, checked before any data is generated, read or cached.

:class:`DataOptions` is what :class:`~lungexp.data.loading.datamodule.NoduleDataModule` is made from: its
constructor checks its arguments here. This module imports no torch or Lightning, so an entry point
can check ``data.*`` before those slow imports (:func:`check_data_config`): a typo costs about a
second. Every problem is a :class:`~lungexp.utils.errors.ConfigError` naming the key as it is typed
on the command line, with the closest valid choice or the range the value must lie in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lungexp.data.labels.annotations import OUTSIDE_CHOICES
from lungexp.data.labels.label_rules import LabelRule
from lungexp.data.labels.sample_table import MISSING_SCANS_CHOICES, TASKS
from lungexp.data.labels.sampled_candidates import NegativesSpec
from lungexp.data.labels.splits import SplitSpec
from lungexp.data.loading.balance import BalanceSpec
from lungexp.data.patches.extraction import PatchSpec
from lungexp.data.synthetic.manifest import GeneratorParams
from lungexp.utils.errors import ConfigError, check_int, check_number, look_up_option

DATAMODULE_TARGET = "lungexp.data.loading.datamodule.NoduleDataModule"
NORMALIZATIONS = ("unit", "symmetric", "zscore")
CACHE_MEMORY = ("mmap", "ram", "device")  # see lungexp.data.loading.memory_cache


@dataclass(frozen=True)
class DataOptions:
    """The checked ``data.*`` options; :class:`~lungexp.data.loading.datamodule.NoduleDataModule` says what each means."""

    root: Path
    labels_csv: Path | None
    task: str
    cache_dir: Path
    patch: PatchSpec
    hu_window: tuple[float, float]
    normalize: str
    split: SplitSpec
    balance: BalanceSpec
    negatives: NegativesSpec
    batch_size: int
    num_workers: int
    preprocess_workers: int
    pin_memory: bool
    cache_memory: str
    missing_scans: str
    outside: str
    max_negatives_per_scan: int | None
    synthetic: dict[str, Any] | None
    annotations_csv: Path | None
    excluded_csv: Path | None
    label_rule: LabelRule | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> DataOptions:
        """Check ``data``: the resolved ``data`` config node, or the datamodule's arguments.

        ``_target_`` and ``train_transform`` are not checked here (Hydra and TorchIO check them).
        """
        split = SplitSpec.from_config(**(data["split"] or {}))
        balance = BalanceSpec.from_config(**(data["balance"] or {}))
        patch = PatchSpec.from_config(**(data["patch"] or {}))
        in_channels = data["in_channels"]
        if in_channels is not None and in_channels != patch.channels:
            raise ConfigError(f"data.in_channels={in_channels} but the patch has {patch.channels} "
                              f"channel(s) (one per data.patch.spacing_mm entry)")
        if not isinstance(data["pin_memory"], bool):
            raise ConfigError(f"data.pin_memory={data['pin_memory']!r} must be true or false")
        synthetic = data["synthetic"]
        if synthetic is not None:
            _check_synthetic(synthetic)
        elif not Path(data["root"]).is_dir():
            raise ConfigError(f"data.root={data['root']} does not exist; point data.root at your scans")
        low, high, normalize = check_hu_window(data["hu_window"], data["normalize"])
        task = look_up_option("data.task", data["task"], TASKS)
        if data["labels_csv"] is None and (task != "candidates" or not data["annotations_csv"]):
            raise ConfigError("data.labels_csv=null (sample negatives) needs data.task=candidates and "
                              "data.annotations_csv; otherwise set data.labels_csv to the task's CSV")
        label_rule = LabelRule.from_config(data.get("label_rule"))
        if label_rule is not None and data["labels_csv"] is None:
            raise ConfigError("data.label_rule labels the rows of data.labels_csv; with data.labels_csv=null "
                              "(sampled negatives) set data.label_rule=null")
        return cls(
            root=Path(data["root"]),
            labels_csv=Path(data["labels_csv"]) if data["labels_csv"] is not None else None,
            task=task,
            cache_dir=Path(data["cache_dir"]),
            patch=patch,
            hu_window=(low, high),
            normalize=normalize,
            split=split,
            balance=balance,
            negatives=NegativesSpec.from_config(**(data["negatives"] or {})),
            batch_size=check_int("data.batch_size", data["batch_size"], minimum=1),
            num_workers=check_int("data.num_workers", data["num_workers"], minimum=0),
            preprocess_workers=check_int("data.preprocess_workers", data["preprocess_workers"], minimum=0),
            pin_memory=data["pin_memory"],
            cache_memory=look_up_option("data.cache_memory", data["cache_memory"], CACHE_MEMORY),
            missing_scans=look_up_option("data.missing_scans", data["missing_scans"], MISSING_SCANS_CHOICES),
            outside=look_up_option("data.outside", data["outside"], OUTSIDE_CHOICES),
            max_negatives_per_scan=check_int("data.max_negatives_per_scan", data["max_negatives_per_scan"],
                                             minimum=0, allow_none=True),
            synthetic=synthetic,
            annotations_csv=Path(data["annotations_csv"]) if data["annotations_csv"] else None,
            excluded_csv=Path(data["excluded_csv"]) if data["excluded_csv"] else None,
            label_rule=label_rule,
        )


def check_data_config(cfg: DictConfig) -> None:
    """Check ``cfg.data`` now, before the slow imports, if it makes a :class:`NoduleDataModule`
    (which checks the same options again when it is made)."""
    if cfg.data.get("_target_") == DATAMODULE_TARGET:
        DataOptions.from_config(OmegaConf.to_container(cfg.data, resolve=True))


def check_hu_window(hu_window: Sequence[float], normalize: str) -> tuple[float, float, str]:
    """``(low, high, normalize)`` from ``data.hu_window`` (``[low, high]``, low < high) and ``data.normalize``."""
    if isinstance(hu_window, str) or not isinstance(hu_window, Sequence) or len(hu_window) != 2:
        raise ConfigError(f"data.hu_window={hu_window!r} must be [low, high] in HU, e.g. [-1000, 400]")
    low, high = (check_number("data.hu_window", value) for value in hu_window)
    if high <= low:
        raise ConfigError(f"data.hu_window=[{low:g}, {high:g}] must be [low, high] with low < high")
    return low, high, look_up_option("data.normalize", normalize, NORMALIZATIONS)


def _check_synthetic(synthetic: Mapping[str, Any]) -> None:
    """``data.synthetic`` as :func:`~lungexp.data.synthetic.generate_luna16_dataset` will check it."""
    settings = {key: value for key, value in synthetic.items() if key != "overwrite"}
    try:
        GeneratorParams.from_arguments(**settings)
    except TypeError as error:  # a key the generator does not take
        raise ConfigError(f"data.synthetic: {error}") from None
    except ValueError as error:  # the message starts with the argument's name
        raise ConfigError(f"data.synthetic.{error}") from None
