"""Every ``data.*`` default agrees wherever it is read: the composed config (``conf/``), :class:`DataOptions` and
the spec classes of the nested options (their fields and their ``from_config``); every ``eval.*`` default is
:class:`EvaluationOptions`' and ``conf/eval/default.yaml``'s alike; every ``target.*`` default is
:class:`HeadSpec`'s wherever ``conf/target`` spells it."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from lungexp.config.store import DATA_OPTIONS
from lungexp.data.labels.sampled_candidates import NegativesSpec
from lungexp.data.labels.splits import SplitSpec
from lungexp.data.labels.targets import HEAD_DEFAULTS, HEAD_KEYS, MULTITASK, SINGLE_KEYS, TargetOptions
from lungexp.data.loading.balance import BalanceSpec
from lungexp.data.options import DataOptions
from lungexp.data.patches.extraction import PatchSpec
from lungexp.evaluation.types import EvaluationOptions, config_key
from lungexp.utils.dictconfig import dotted_leaves, to_dict
from tests.helpers.config import CONFIG_DIR, compose_config

SPECS = {"patch": PatchSpec, "split": SplitSpec, "balance": BalanceSpec, "negatives": NegativesSpec}
BASE = CONFIG_DIR / "base_datamodule.yaml"
DATA_CHOICES = sorted(path.stem for path in (CONFIG_DIR / "data").glob("*.yaml"))
TARGET_CHOICES = sorted(path.stem for path in (CONFIG_DIR / "target").glob("*.yaml"))


def _plain(value: Any) -> Any:
    """Tuples as lists, as the config holds them."""
    return [_plain(item) for item in value] if isinstance(value, tuple | list) else value



def _yaml_keys(path: Path) -> set[str]:
    """The options ``path`` sets, with those of the files its defaults list includes (``/base_x@_here_``
    from ``conf/``, a bare name from the same folder), but not the defaults node itself (DataOptions')."""
    node = to_dict(OmegaConf.load(path), resolve=False)
    keys = {key for key, _ in dotted_leaves(node)}
    for entry in node.get("defaults", []):
        if entry not in ("_self_", f"/{DATA_OPTIONS}@_here_"):
            name = entry.removesuffix("@_here_")
            keys |= _yaml_keys(CONFIG_DIR / f"{name[1:]}.yaml" if name.startswith("/") else path.parent / f"{name}.yaml")
    return keys


def _config_parameters(spec: type) -> dict[str, Any]:
    """The nested option's keys and defaults as the config gives them: ``from_config``'s parameters."""
    return {name: _plain(parameter.default)
            for name, parameter in inspect.signature(spec.from_config).parameters.items()}


def test_every_nested_option_has_its_spec_class_here() -> None:
    nested = {name for name, value in DataOptions.config_defaults().items() if isinstance(value, Mapping)}
    assert nested == set(SPECS), "a new nested option: add its spec class to SPECS"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_data_options_nested_defaults_are_the_spec_classes(name: str) -> None:
    """DataOptions' default of ``name`` is its spec's ``from_config`` defaults; the keys it leaves out are set by
    ``conf/base_datamodule.yaml`` (the run's seed); ``Spec()`` is ``Spec.from_config()``, and each field's
    default is its parameter's."""
    spec = SPECS[name]
    parameters = _config_parameters(spec)
    declared = DataOptions.config_defaults()[name]
    assert declared == {key: parameters[key] for key in declared}
    set_by_base_yaml = {key.removeprefix(f"{name}.") for key in _yaml_keys(BASE) if key.startswith(f"{name}.")}
    assert set(parameters) == set(declared) | set_by_base_yaml
    assert spec() == spec.from_config()
    for item in dataclasses.fields(spec):
        if item.name in parameters:
            assert _plain(item.default) == parameters[item.name], f"{spec.__name__}.{item.name}"


@pytest.mark.parametrize("data", DATA_CHOICES)
def test_composed_config_holds_every_default_its_files_do_not_set(data: str, tmp_path: Path) -> None:
    """Every ``data.*`` option, nested ones included, is in the composed config, with DataOptions' default
    wherever neither ``conf/data/<data>.yaml`` nor ``conf/base_datamodule.yaml`` sets it."""
    composed = dict(dotted_leaves(to_dict(compose_config([f"data={data}"], tmp_path).data, resolve=False)))
    set_by_files = _yaml_keys(CONFIG_DIR / "data" / f"{data}.yaml")
    defaults = {key: value for key, value in dotted_leaves(DataOptions.config_defaults())
                if key not in set_by_files and not any(set_key.startswith(f"{key}.") for set_key in set_by_files)}
    assert set(defaults) <= set(composed), set(defaults) - set(composed)
    assert {key: composed[key] for key in defaults} == defaults


def test_every_option_without_a_default_is_required() -> None:
    """root and labels_csv have no default, so the config must set them (``???`` or a path)."""
    required = {item.name for item in dataclasses.fields(DataOptions)
                if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING}
    assert required == {"root", "labels_csv"}
    assert not required & set(DataOptions.config_defaults())


def test_the_eval_yaml_declares_every_option_at_its_dataclass_default(tmp_path: Path) -> None:
    """``conf/eval/default.yaml``, the composed config's ``eval`` group and :class:`EvaluationOptions` hold the same
    options with the same defaults, the nested ``gradcam.*`` included, and ``strata`` off: none of them can gain,
    lose or change an option alone."""
    yaml = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "eval" / "default.yaml"))
    assert isinstance(yaml, dict)
    declared = {}
    for key, value in yaml.items():  # nested groups as dotted keys, as config_key names them
        nested = value.items() if isinstance(value, dict) else [("", value)]
        declared.update({f"{key}.{inner}".rstrip("."): inner_value for inner, inner_value in nested})
    assert declared == {config_key(item.name): item.default for item in dataclasses.fields(EvaluationOptions)}
    assert EvaluationOptions.from_config(yaml) == EvaluationOptions()
    assert declared["strata"] is None and EvaluationOptions().strata is None
    assert to_dict(compose_config([], tmp_path).eval, resolve=True) == EvaluationOptions().to_config()


@pytest.mark.parametrize("target", TARGET_CHOICES)
def test_target_files_spell_each_head_option_with_its_default(target: str, tmp_path: Path) -> None:
    """Each head of ``conf/target/<target>.yaml`` gives only head options; those it repeats from
    :data:`HEAD_DEFAULTS` (class weights, loss weight) hold HeadSpec's defaults, and a multitask head spells every
    option, so that ``target.auxiliary.<name>.weight=…`` needs no ``+``. The presets choose kinds, columns and
    rules only."""
    composed = to_dict(compose_config([f"target={target}"], tmp_path).target, resolve=True)
    multitask = composed["kind"] == MULTITASK
    heads = [composed["primary"], *composed["auxiliary"].values()] if multitask else [composed]
    for head in heads:
        assert set(head) == set(HEAD_KEYS) if multitask else set(head) <= set(SINGLE_KEYS), head
        assert {key: head[key] for key in ("class_weights", "weight") if key in head} == {
            key: HEAD_DEFAULTS[key] for key in ("class_weights", "weight") if key in head}


def test_the_default_target_is_target_options_default(tmp_path: Path) -> None:
    composed = to_dict(compose_config([], tmp_path).target, resolve=True)
    assert TargetOptions.from_config(composed) == TargetOptions()
    assert composed == {key: value for key, value in TargetOptions().to_config().items() if key in composed}
