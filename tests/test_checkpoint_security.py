"""Hostile checkpoints: what a file may build is decided on the resolved object, stored configs are plain data.

Each file is a valid lungexp checkpoint (recipe + weights, ``weights_only``-loadable) with one part of its
recipe replaced, as an attacker would; nothing it names may run, nothing may be written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from lungexp.config.checkpoint_groups import checkpoint_evaluation, data_config
from lungexp.inference.checkpoint_evaluation import evaluate_checkpoint
from lungexp.models import CNN3D
from lungexp.training.checkpoint import RECIPE_KEY, CheckpointError, ModelRecipe, load_checkpoint
from tests.helpers.checkpoints import DATA, NET, write_checkpoint
from tests.helpers.cli import run_entry_point
from tests.helpers.config import compose_config
from tests.helpers.fork_server import ForkServer


def savetxt(target: Path) -> dict[str, Any]:
    """A node that writes ``target`` when instantiated, through a module attribute of lungexp.data."""
    return {"_target_": "lungexp.data.patches.cache.np.savetxt", "fname": str(target), "X": [[1.0]]}


def refused(path: Path, *names: str) -> str:
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "older" not in message, message
    for name in names:
        assert name in message, message
    return message


def test_a_checkpoint_of_our_own_classes_loads(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "ok.ckpt", net={**NET, "_target_": "lungexp.models.cnn3d.CNN3D"})
    trained = load_checkpoint(path)
    assert isinstance(trained.net, CNN3D)  # another path to the same class is the same class


def test_a_network_target_reaching_a_function_through_a_module_attribute_is_refused(tmp_path: Path) -> None:
    """``lungexp.models.pretrained.os.write`` starts like ours but is ``os.write``: it must not run."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    hostile = {"_target_": "lungexp.models.pretrained.os.write", "_args_": [write_end, b"pwned"]}
    try:
        message = refused(write_checkpoint(tmp_path / "os_write.ckpt", net=hostile),
                          "'lungexp.models.pretrained.os.write'", "posix.write", "lungexp.models.cnn3d.CNN3D")
        with pytest.raises(BlockingIOError):
            os.read(read_end, 16)  # nothing was written to the pipe
    finally:
        os.close(read_end)
        os.close(write_end)
    assert "refused" in message


def test_a_network_target_writing_a_file_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    written = tmp_path / "site-packages" / "evil.pth"
    written.parent.mkdir()
    refused(write_checkpoint(tmp_path / "savetxt.ckpt", net=savetxt(written)),
            "'lungexp.data.patches.cache.np.savetxt'", "numpy.savetxt")
    assert not written.exists()


def test_a_target_nested_in_the_network_arguments_is_refused(tmp_path: Path) -> None:
    written = tmp_path / "nested.txt"
    refused(write_checkpoint(tmp_path / "nested.ckpt", net={**NET, "widths": savetxt(written)}),
            "widths._target_='lungexp.data.patches.cache.np.savetxt'")
    assert not written.exists()


def test_a_target_outside_the_project_is_refused_without_importing_it(tmp_path: Path) -> None:
    refused(write_checkpoint(tmp_path / "system.ckpt", net={"_target_": "this.d"}), "'this.d'")
    assert "this" not in __import__("sys").modules  # importing a module runs it


def test_a_target_in_the_stored_data_config_is_refused_by_evaluate(tmp_path: Path) -> None:
    """A nested node in the data config would be built by evaluate before the datamodule (which then runs
    normally): the file must be refused before any of it is built."""
    written = tmp_path / "from_data.txt"
    path = write_checkpoint(tmp_path / "data.ckpt", data={**DATA, "synthetic": savetxt(written)})
    cfg = compose_config([f"ckpt_path={path}", "device=cpu", "~logger"], tmp_path, config_name="evaluate")
    with pytest.raises(CheckpointError, match=r"data config sets synthetic\._target_='lungexp\.data\.patches\.cache\.np"):
        evaluate_checkpoint(checkpoint_evaluation(cfg, [f"ckpt_path={path}"]))
    assert not written.exists()
    refused(write_checkpoint(tmp_path / "data_root.ckpt", data={**DATA, "_target_": "lungexp.data.patches.cache.np.savetxt"}),
            "lungexp.data.loading.datamodule.NoduleDataModule")


@pytest.mark.parametrize(("where", "replace"), [
    ("data", lambda value: {"data": {**DATA, "root": value}}),
    ("data", lambda value: {"data": {**DATA, "labels_csv": "${data.${oc.env:LUNGEXP_TEST_SECRET}}"}}),
    ("data", lambda value: {"data": {**DATA, "root": "${paths.mlflow_uri}"}}),  # a server URI may hold a password
    ("network", lambda value: {"net": {**NET, "widths": value}}),
    ("eval", lambda value: {"evaluation": {"threshold": value}}),
])
def test_interpolations_reaching_outside_the_stored_values_are_refused(tmp_path: Path, monkeypatch, where: str,
                                                                        replace) -> None:
    monkeypatch.setenv("LUNGEXP_TEST_SECRET", "hunter2")
    path = write_checkpoint(tmp_path / "env.ckpt", **replace("${oc.env:LUNGEXP_TEST_SECRET}"))
    message = refused(path, "interpolation that reaches outside the stored values")
    assert "hunter2" not in message


def test_evaluate_writes_its_cache_where_the_users_config_says(tmp_path: Path) -> None:
    recipe = ModelRecipe.from_dict(torch.load(write_checkpoint(tmp_path / "ok.ckpt"), weights_only=True)[RECIPE_KEY],
                                   tmp_path / "ok.ckpt")
    cfg = compose_config(["ckpt_path=x.ckpt"], tmp_path, config_name="evaluate")
    assert data_config(cfg, recipe, [])["cache_dir"] == "${paths.cache_dir}"  # not the file's /data/cache
    cfg = compose_config(["ckpt_path=x.ckpt", "data.cache_dir=/mine"], tmp_path, config_name="evaluate")
    data = OmegaConf.create({"data": data_config(cfg, recipe, ["data.cache_dir=/mine"])})
    assert data.data.cache_dir == "/mine" and data.data.labels_csv == "/data/luna16/candidates_V2.csv"


def test_evaluate_generates_demo_data_only_in_the_users_root(tmp_path: Path) -> None:
    """A stored ``data.synthetic`` with a root of the file's choosing would write the demo dataset there."""
    hostile = {**DATA, "root": str(tmp_path / "chosen"), "synthetic": {"num_scans": 2}}
    checkpoint = write_checkpoint(tmp_path / "gen.ckpt", data=hostile)
    recipe = ModelRecipe.from_dict(torch.load(checkpoint, weights_only=True)[RECIPE_KEY], checkpoint)
    cfg = compose_config(["ckpt_path=x.ckpt"], tmp_path, config_name="evaluate")
    assert data_config(cfg, recipe, [])["synthetic"] is None
    own_root = OmegaConf.to_container(cfg.data, resolve=False)["root"]
    mine = ModelRecipe.from_dict({**recipe.to_dict(), "data": {**hostile, "root": own_root}}, checkpoint)
    assert data_config(cfg, mine, [])["synthetic"] == OmegaConf.to_container(cfg.data, resolve=False)["synthetic"]


def test_damaged_files_are_named_without_unsafe_advice(tmp_path: Path) -> None:
    truncated = write_checkpoint(tmp_path / "last.ckpt")
    truncated.write_bytes(truncated.read_bytes()[:3000])
    random = tmp_path / "random.ckpt"
    random.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0),
                                     dtype=torch.uint8).numpy().tobytes())
    for path in (truncated, random):
        message = refused(path, "not a readable PyTorch checkpoint")
        assert "weights_only" not in message and "will likely succeed" not in message


def test_predict_refuses_a_hostile_checkpoint_with_one_line(tmp_path: Path, fork_server: ForkServer) -> None:
    written = tmp_path / "site-packages" / "evil.pth"
    written.parent.mkdir()
    hostile = {"_target_": "lungexp.models.pretrained.torch.save", "_args_": [[1.0], str(written)]}
    path = write_checkpoint(tmp_path / "hostile.ckpt", net=hostile)
    proc = run_entry_point("predict", [f"ckpt_path={path}", f"scans={tmp_path}", f"candidates={tmp_path}/c.csv",
                                       f"out={tmp_path}/out.csv", "device=cpu", f"hydra.run.dir={tmp_path}"], tmp_path,
                           fork_server=fork_server)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert str(path) in line and "'lungexp.models.pretrained.torch.save'" in line, line
    assert not written.exists()


def _first_weight_not_a_tensor(state: dict[str, Any]) -> None:
    state["state_dict"][next(iter(state["state_dict"]))] = [0.0]


@pytest.mark.parametrize(("damage", "named"), [
    (lambda state: state[RECIPE_KEY]["net"].update(_partial_=True), "its network config sets _partial_=True"),
    (lambda state: state[RECIPE_KEY]["net"].update(_args_=[1]), "its network config sets _args_=[1]"),
    (lambda state: state[RECIPE_KEY]["data"].update(_partial_=True), "its data config sets _partial_=True"),
    (lambda state: state[RECIPE_KEY]["net"].update(widths={"_recursive_": False}), "widths._recursive_=False"),
    (lambda state: state.update(state_dict=[1, 2]), "its 'state_dict' is damaged"),
    (lambda state: state["state_dict"].update({1: torch.zeros(1)}), "its 'state_dict' is damaged"),
    (lambda state: state.update(hyper_parameters=["evaluation"]), "its 'hyper_parameters' is damaged"),
    (lambda state: state.update(validation_predictions={"label": [1, 0], "probability": [0.5]}),
     "its 'validation_predictions' is damaged"),
    (_first_weight_not_a_tensor, "its weights do not fit its own network config"),
], ids=["partial", "args", "data_partial", "nested_recursive", "state_dict_list", "weight_key_not_a_string",
        "hyper_parameters_list", "uneven_validation_columns", "weight_not_a_tensor"])
def test_a_checkpoint_built_otherwise_or_damaged_in_any_part_is_one_error_naming_file_and_key(tmp_path: Path, damage,
                                                                                               named: str) -> None:
    path = write_checkpoint(tmp_path / "hand_made.ckpt")
    state = torch.load(path, weights_only=True)
    damage(state)
    torch.save(state, path)
    refused(path, named)
