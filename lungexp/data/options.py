"""Every ``data.*`` option, declared once and checked before any data is generated, read or cached.

:class:`DataOptions` is what :class:`~lungexp.data.loading.datamodule.NoduleDataModule` is made from: each
field is one option (its name, type, default and line of doc, and the check that turns a given value into
the field's type), and the datamodule takes exactly these as its arguments. This module imports no torch or
Lightning, so an entry point checks ``data.*`` before those slow imports: a typo costs about a second.

A problem is an :class:`~lungexp.utils.errors.ArgumentError` naming the option as the datamodule's
parameter (``split.method``), with the closest valid choice or the range the value must lie in; where the
``data`` config meets the code, :func:`lungexp.config.check` names the key (``data.split.method``).

Adding an option: one field below (``option(default, doc, check)``); the table of data options in
``docs/data.md`` is generated from these fields (``scripts/docs_tables.py``, a test fails when it is stale). The
``data`` config starts from these defaults (:meth:`DataOptions.config_defaults`), so no YAML file repeats them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import TYPE_CHECKING, Any

from lungexp.utils.errors import ArgumentError, check_int, check_number, look_up_option, named_under

if TYPE_CHECKING:
    from lungexp.data.labels.label_rules import LabelRule
    from lungexp.data.labels.sampled_candidates import NegativesSpec
    from lungexp.data.labels.splits import SplitSpec
    from lungexp.data.loading.balance import BalanceSpec
    from lungexp.data.patches.extraction import PatchSpec

CACHE_MEMORY = ("mmap", "ram", "device")  # see lungexp.data.loading.memory_cache

Check = Callable[[str, Any], Any]
REQUIRED = object()  # an option without a default


def _frozen(**defaults: Any) -> Mapping[str, Any]:
    """The defaults of a nested option, read-only (a dataclass default is shared by every instance)."""
    return MappingProxyType(defaults)


def option(default: Any, doc: str, check: Check | None = None) -> Any:
    """One option: its ``default`` as given (before ``check``), its line of ``doc``, and ``check(name, value)``,
    which raises an :class:`ArgumentError` naming ``name`` or returns the value as the field's type."""
    metadata = {"doc": doc, "check": check}
    if default is REQUIRED:
        return field(metadata=metadata)
    if isinstance(default, Mapping):  # a nested option's defaults: read-only, so every instance may share them
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


def _path(name: str, value: Any) -> Path:
    return Path(value)


def _optional_path(name: str, value: Any) -> Path | None:
    return Path(value) if value else None


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ArgumentError(f"{name}={value!r} must be true or false")
    return value


def _whole(minimum: int, allow_none: bool = False) -> Check:
    return lambda name, value: check_int(name, value, minimum=minimum, allow_none=allow_none, error=ArgumentError)


@functools.cache
def _data_layer() -> SimpleNamespace:
    """What the checks use from the sub-packages below, imported when an option is first checked: declaring the
    options (and composing the config, whose defaults are these) imports none of pandas, scipy or SimpleITK, and
    checking them no torch. Imports, not import strings, so that import-linter sees them."""
    from lungexp.data.labels.annotations import OUTSIDE_CHOICES
    from lungexp.data.labels.covariates import covariate_names
    from lungexp.data.labels.label_rules import LabelRule
    from lungexp.data.labels.sample_table import MISSING_SCANS_CHOICES, TASKS
    from lungexp.data.labels.sampled_candidates import NegativesSpec
    from lungexp.data.labels.splits import SplitSpec
    from lungexp.data.loading.balance import BalanceSpec
    from lungexp.data.patches.extraction import PatchSpec
    from lungexp.data.patches.normalization import NORMALIZATIONS
    from lungexp.data.synthetic.manifest import GeneratorParams

    return SimpleNamespace(OUTSIDE_CHOICES=OUTSIDE_CHOICES, LabelRule=LabelRule, TASKS=TASKS,
                           MISSING_SCANS_CHOICES=MISSING_SCANS_CHOICES, NegativesSpec=NegativesSpec, SplitSpec=SplitSpec,
                           BalanceSpec=BalanceSpec, PatchSpec=PatchSpec, NORMALIZATIONS=NORMALIZATIONS,
                           GeneratorParams=GeneratorParams, covariate_names=covariate_names)


def _choice(choices: Sequence[str] | Callable[[SimpleNamespace], Sequence[str]]) -> Check:
    """One of ``choices``, or of those it picks from :func:`_data_layer`."""
    return lambda name, value: look_up_option(name, value, choices(_data_layer()) if callable(choices) else choices,
                                              error=ArgumentError)


def _spec(spec: Callable[[SimpleNamespace], Any]) -> Check:
    """A nested option (``patch``, ``split``, ...) checked by the ``from_config`` of the class ``spec`` picks from
    :func:`_data_layer`, its errors named ``name.key``."""
    def check(name: str, value: Any) -> Any:
        if not isinstance(value, Mapping | None):
            return value  # already checked (e.g. a PatchSpec)
        with named_under(name):
            return spec(_data_layer()).from_config(**(value or {}))
    return check


def _label_rule(name: str, rule: Any) -> LabelRule | None:
    label_rule = _data_layer().LabelRule
    return rule if isinstance(rule, label_rule) else label_rule.from_config(rule)


def _covariates(name: str, covariates: Any) -> tuple[str, ...]:
    """Column names; which of them a model may take is checked where ``model.covariates`` is (the readers' ratings,
    :func:`lungexp.config.check.check`)."""
    return _data_layer().covariate_names(covariates, key=name)


def _plain(value: Any) -> Any:
    """``value`` in OmegaConf's types: mappings as dicts, tuples as lists, paths as text."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value


def check_hu_window(name: str, hu_window: Any) -> tuple[float, float]:
    """``(low, high)`` from ``[low, high]`` in HU, low < high."""
    if isinstance(hu_window, str) or not isinstance(hu_window, Sequence) or len(hu_window) != 2:
        raise ArgumentError(f"{name}={hu_window!r} must be [low, high] in HU, e.g. [-1000, 400]")
    low, high = (check_number(name, value, error=ArgumentError) for value in hu_window)
    if high <= low:
        raise ArgumentError(f"{name}=[{low:g}, {high:g}] must be [low, high] with low < high")
    return low, high


def _synthetic(name: str, synthetic: Any) -> dict[str, Any] | None:
    """The keyword arguments of :func:`~lungexp.data.synthetic.generate_luna16_dataset`, as it will check them."""
    if synthetic is None:
        return None
    settings = {key: value for key, value in synthetic.items() if key != "overwrite"}
    try:
        _data_layer().GeneratorParams.from_arguments(**settings)
    except TypeError as error:  # a key the generator does not take
        raise ArgumentError(f"{name}: {error}") from None
    except ValueError as error:  # the message starts with the argument's name
        raise ArgumentError(f"{name}.{error}") from None
    return dict(synthetic)


@dataclass(frozen=True)
class DataOptions:
    """The checked ``data.*`` options (``conf/base_datamodule.yaml`` sets them for a run).

    Made from the options as given (each checked by its field's ``check``, then in combination);
    :func:`doc` gives each one's line of documentation.
    """

    root: Path = option(REQUIRED, "folder of scans (LUNA16 subsetK/<seriesuid>.mhd, or any nesting of "
                        ".mhd/.nii/.nii.gz/.nrrd files named by seriesuid)", _path)
    labels_csv: Path | None = option(REQUIRED, "the task's CSV (see lungexp.data.labels.sample_table.read_labels); "
                                     "null: sample negatives (task=candidates with annotations_csv)", _optional_path)
    task: str = option("candidates", "candidates | malignancy | points", _choice(lambda layer: layer.TASKS))
    cache_dir: Path = option("data/cache", "where patch caches live", _path)
    patch: PatchSpec = option(_frozen(size=32, size_mm=None, spacing_mm=(1.0,), pad_hu=-1000), "patch geometry: {size, size_mm, spacing_mm, pad_hu} (PatchSpec.from_config)",
                              _spec(lambda layer: layer.PatchSpec))
    hu_window: tuple[float, float] = option((-1000, 400), "[low, high] HU kept (clipped outside)",
                                            check_hu_window)
    normalize: str = option("unit", "unit ([0, 1]) | symmetric ([-1, 1]) | zscore (per patch), see HUWindow",
                            _choice(lambda layer: layer.NORMALIZATIONS))
    split: SplitSpec = option(_frozen(method="subsets", fold=0, val_fold=1, num_folds=None, val_fraction=0.15,
                                      test_fraction=0.15, group_by="auto"), "how series are split: {method: subsets|series|folds, ...; "
                              "group_by: auto (patient_id where the labels have it, else seriesuid) | a column} "
                              "(SplitSpec.from_config)", _spec(lambda layer: layer.SplitSpec))
    balance: BalanceSpec = option(_frozen(sampler="balanced", positive_fraction=0.5, samples_per_epoch=None),
                                  "training sampler: {sampler: none|balanced, positive_fraction, "
                                  "samples_per_epoch} (BalanceSpec.from_config)", _spec(lambda layer: layer.BalanceSpec))
    batch_size: int = option(32, "patches per batch", _whole(1))
    num_workers: int = option(2, "DataLoader workers (the per-patch augmentation runs there)", _whole(0))
    preprocess_workers: int = option(2, "processes building the patch cache", _whole(0))
    pin_memory: bool = option(False, "DataLoader pin_memory", _flag)
    synthetic: dict[str, Any] | None = option(None, "keyword arguments of generate_luna16_dataset, run when root "
                                              "holds no dataset; null: real data", _synthetic)
    missing_scans: str = option("skip", "rows whose scan is not under root: skip | error (build_samples)",
                                _choice(lambda layer: layer.MISSING_SCANS_CHOICES))
    outside: str = option("error", "coordinates outside their scan: error | skip (build_samples)",
                          _choice(lambda layer: layer.OUTSIDE_CHOICES))
    in_channels: int | None = option(None, "if given, must equal the number of patch scales (the model's input "
                                     "channels)")
    annotations_csv: Path | None = option(None, "LUNA16 annotations.csv: with task=candidates and labels_csv=null, "
                                          "the positives (negatives sampled from the lungs)", _optional_path)
    excluded_csv: Path | None = option(None, "LUNA16 annotations_excluded.csv: negatives on these findings are "
                                       "dropped", _optional_path)
    negatives: NegativesSpec = option(_frozen(count=30, vessel_fraction=0.5, margin_mm=10.0), "sampled negatives: {count, vessel_fraction, margin_mm, seed} "
                                      "(NegativesSpec.from_config)", _spec(lambda layer: layer.NegativesSpec))
    max_negatives_per_scan: int | None = option(None, "keep at most this many negatives of each training scan "
                                                "(seeded by split.seed); null keeps all", _whole(0, allow_none=True))
    cache_memory: str = option("mmap", "where training reads patches from: mmap | ram | device "
                               "(lungexp.data.loading.memory_cache)", _choice(CACHE_MEMORY))
    label_rule: LabelRule | None = option(None, "{column, positive, negative}: labels from a rating column "
                                          "(LabelRule); null keeps the CSV's labels", _label_rule)
    covariates: tuple[str, ...] = option((), "numeric columns of labels_csv each sample carries as its covariates "
                                         "(follows model.covariates)", _covariates)
    images: bool = option(True, "samples carry their image patch; false (model=tabular): their covariates and label "
                          "only, and no patch cache is built (follows model.images)", _flag)

    def __post_init__(self) -> None:
        for item in fields(self):
            check = item.metadata["check"]
            if check is not None:
                object.__setattr__(self, item.name, check(item.name, getattr(self, item.name)))
        if self.in_channels is not None and self.in_channels != self.patch.channels:
            raise ArgumentError(f"in_channels={self.in_channels} but the patch has {self.patch.channels} "
                                f"channel(s) (one per patch.spacing_mm entry)", "patch.spacing_mm")
        if self.synthetic is None and not self.root.is_dir():
            raise ArgumentError(f"root={self.root} does not exist; point root at your scans")
        if self.labels_csv is None and (self.task != "candidates" or self.annotations_csv is None):
            raise ArgumentError("labels_csv=null (sample negatives) needs task=candidates and annotations_csv; "
                                "otherwise set labels_csv to the task's CSV", "task", "annotations_csv")
        if self.label_rule is not None and self.labels_csv is None:
            raise ArgumentError("label_rule labels the rows of labels_csv; with labels_csv=null (sampled "
                                "negatives) set label_rule=null", "labels_csv")
        if not self.images and not self.covariates:
            raise ArgumentError("images=false (model=tabular) leaves a sample nothing to be scored on: give its "
                                "covariates (model.covariates=[diameter_mm])", "covariates")
        if self.covariates and self.labels_csv is None:
            raise ArgumentError(f"covariates={list(self.covariates)} are columns of labels_csv; sampled negatives "
                                "(labels_csv=null) have none", "labels_csv")

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        """Every option with a default, as the ``data`` config holds it (:mod:`lungexp.config.store` puts it in
        Hydra's ConfigStore as ``base_data_options``, which ``conf/base_datamodule.yaml`` starts from)."""
        defaults: dict[str, Any] = {}
        for item in fields(cls):
            if item.default is not dataclasses.MISSING:
                defaults[item.name] = _plain(item.default)
            elif callable(item.default_factory):  # a nested option's read-only mapping
                defaults[item.name] = _plain(item.default_factory())
        return defaults

    @classmethod
    def doc(cls, name: str) -> str:
        """The line of documentation of option ``name``."""
        return next(item.metadata["doc"] for item in fields(cls) if item.name == name)

    @classmethod
    def parameters(cls) -> list[inspect.Parameter]:
        """The options as keyword-only parameters with their defaults (the datamodule's signature)."""
        return [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                for parameter in inspect.signature(cls).parameters.values()]
