"""A misspelt key on the command line is one message naming the key it was likely meant to be, before Hydra
runs (Hydra's own message advises adding the typo as a new key with +)."""

from __future__ import annotations

import pytest

from lungexp.config.command_line import misspelt_key
from lungexp.config.store import register_configs

register_configs()  # as each entry point does when imported


@pytest.mark.parametrize(("config", "argv", "message"), [
    ("config", ["trainer.max_epoch=3"],
     "trainer.max_epoch=3 on the command line: trainer has no key 'max_epoch' (did you mean 'max_epochs'?)"),
    ("config", ["model=resnet3d", "model.net.depht=18"],
     "model.net.depht=18 on the command line: model.net has no key 'depht' (did you mean 'depth'?)"),
    ("config", ["modle=resnet3d"],
     "modle=resnet3d on the command line: there is no top-level key 'modle' (did you mean 'model'?)"),
    ("evaluate", ["ckpt_path=x.ckpt", "spilt=val"],
     "spilt=val on the command line: there is no top-level key 'spilt' (did you mean 'split'?)"),
    ("predict", ["ckpt_path=x.ckpt", "candidate=points.csv"],
     "candidate=points.csv on the command line: there is no top-level key 'candidate' (did you mean 'candidates'?)"),
])
def test_a_misspelt_key_is_named_with_the_nearest_one(config: str, argv: list[str], message: str) -> None:
    assert misspelt_key(config, argv) == message


@pytest.mark.parametrize("argv", [
    ["trainer.max_epochs=3", "model=resnet3d", "model.net.depth=18"],  # all there
    ["data.label_rule=nodulemnist3d"],  # a group option selected under a dotted name
    ["experiment=demo", "trainer.max_epochs=3"],
    ["+trainer.max_epoch=3"],  # a new key, asked for: the checks after composition judge it
    ["-m", "trainer.max_epoch=1,2"],  # a sweep: Hydra's (and each job's) to report
    ["--cfg", "job", "trainer.max_epochs=3"],
    ["model=not_a_model"],  # not a key: Hydra lists the options
    [],
])
def test_what_is_no_misspelt_key_is_left_to_hydra_and_the_checks(argv: list[str]) -> None:
    assert misspelt_key("config", argv) is None
