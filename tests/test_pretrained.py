"""Strict pretrained loading: MedicalNet files (built by :mod:`tests.helpers.checkpoints` from MedicalNet's
naming, independently of our ResNet3D), Lightning checkpoints, plain state dicts, stem adaptation,
integrity and safety checks."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch

import lungexp.models.pretrained as pretrained_module
from lungexp.models import CNN3D, DenseNet3D, PretrainedWeightsError, ResNet3D, SEResNet3D, load_pretrained
from tests.helpers.checkpoints import medicalnet_key_shapes, random_tensors, save_medicalnet_checkpoint


@pytest.fixture(scope="module")
def medicalnet_files(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[int, tuple[Path, dict[str, torch.Tensor]]]:
    folder = tmp_path_factory.mktemp("medicalnet")
    files = {}
    for depth, shortcut in ((10, "B"), (18, "A")):
        tensors = random_tensors(medicalnet_key_shapes(depth, shortcut), seed=depth)
        files[depth] = (save_medicalnet_checkpoint(folder / f"resnet_{depth}.pth", tensors), tensors)
    return files


def _backbone_shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith("head.")}


@pytest.mark.parametrize(("depth", "shortcut"), [(10, "B"), (18, "A")])
def test_resnet3d_has_medicalnet_names_and_shapes(depth: int, shortcut: str) -> None:
    expected = {
        k: v for k, v in medicalnet_key_shapes(depth, shortcut).items() if not k.startswith("conv_seg.")
    }
    assert _backbone_shapes(ResNet3D(depth)) == expected
    assert _backbone_shapes(ResNet3D(depth, dilated=True)) == expected


@pytest.mark.parametrize("depth", [10, 18])
@pytest.mark.parametrize("checkpoint_format", ["medicalnet", "auto"])
def test_medicalnet_checkpoint_loads_every_backbone_tensor(
    medicalnet_files: dict, depth: int, checkpoint_format: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, tensors = medicalnet_files[depth]
    net = ResNet3D(depth)
    head_before = {k: v.clone() for k, v in net.head.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="lungexp.models.pretrained"):
        report = load_pretrained(net, path, format=checkpoint_format)

    state = net.state_dict()
    backbone_keys = [k for k in tensors if not k.startswith("conv_seg.")]
    for key in backbone_keys:
        assert torch.equal(state[key], tensors[key]), key
    assert all(torch.equal(net.head.state_dict()[k], v) for k, v in head_before.items())
    assert report.format == "medicalnet"
    assert report.loaded == len(backbone_keys)
    assert report.fresh_keys == ("head.3.weight", "head.3.bias")
    assert report.fresh == 2
    assert report.sha256 is None  # no sha256 configured: nothing hashed, nothing claimed
    assert report.as_params() == {
        "pretrained.path": str(path),
        "pretrained.format": "medicalnet",
        "pretrained.loaded_tensors": len(backbone_keys),
        "pretrained.fresh_tensors": 2,
    }
    assert f"Loaded {len(backbone_keys)} pretrained tensors" in caplog.text


def test_medicalnet_weights_fit_the_dilated_and_attention_variants(medicalnet_files: dict) -> None:
    path, _ = medicalnet_files[10]
    load_pretrained(ResNet3D(10, shortcut_type="B", dilated=True), path, format="medicalnet")
    with pytest.raises(PretrainedWeightsError, match="missing") as error:
        load_pretrained(SEResNet3D(10), path)  # attention tensors are not in MedicalNet's file
    assert "layer1.0.attention.excite.0.weight" in str(error.value)


def test_pretrained_and_scratch_networks_differ(medicalnet_files: dict) -> None:
    path, _ = medicalnet_files[10]
    torch.manual_seed(0)
    scratch = ResNet3D(10).eval()
    pretrained = ResNet3D(10).eval()
    pretrained.load_state_dict(scratch.state_dict())
    load_pretrained(pretrained, path)
    inputs = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(scratch(inputs), pretrained(inputs))


def test_wrong_shortcut_type_is_reported(medicalnet_files: dict) -> None:
    path, _ = medicalnet_files[18]
    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained(ResNet3D(18, shortcut_type="B"), path)
    assert "layer2.0.downsample.0.weight" in str(error.value)
    assert "shortcut" in str(error.value)


def test_renamed_key_is_listed_as_missing_and_unexpected(medicalnet_files: dict, tmp_path: Path) -> None:
    _, tensors = medicalnet_files[10]
    renamed = dict(tensors)
    renamed["layer1.0.convX.weight"] = renamed.pop("layer1.0.conv1.weight")
    path = save_medicalnet_checkpoint(tmp_path / "renamed.pth", renamed)
    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained(ResNet3D(10), path)
    message = str(error.value)
    assert str(path) in message
    assert "missing (1):\n    layer1.0.conv1.weight" in message
    assert "unexpected (1):\n    layer1.0.convX.weight" in message


def test_misshaped_key_is_listed_with_both_shapes(medicalnet_files: dict, tmp_path: Path) -> None:
    _, tensors = medicalnet_files[10]
    path = save_medicalnet_checkpoint(
        tmp_path / "misshaped.pth", tensors | {"layer3.0.conv2.weight": torch.zeros(256, 256, 3, 3, 1)}
    )
    net = ResNet3D(10)
    before = net.layer1[0].conv1.weight.clone()
    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained(net, path)
    assert "layer3.0.conv2.weight: file (256, 256, 3, 3, 1) vs model (256, 256, 3, 3, 3)" in str(error.value)
    assert torch.equal(net.layer1[0].conv1.weight, before)  # nothing is loaded when anything is wrong


def test_checkpoint_without_batchnorm_counters_loads(medicalnet_files: dict, tmp_path: Path) -> None:
    """Pre-0.4.1 PyTorch files lack ``num_batches_tracked``: the only gap the strict check tolerates."""
    _, tensors = medicalnet_files[10]
    without_counters = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    report = load_pretrained(ResNet3D(10), save_medicalnet_checkpoint(tmp_path / "old.pth", without_counters))
    assert {key for key in report.fresh_keys if not key.startswith("head.")} == {
        key for key in tensors if key.endswith("num_batches_tracked") and not key.startswith("conv_seg.")
    }


def test_long_key_lists_are_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cnn.pt"
    torch.save(CNN3D(widths=(2, 2)).state_dict(), path)
    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained(ResNet3D(34, widths=(2, 2, 2, 2)), path)
    missing_section = str(error.value).split("missing (")[1].split("unexpected")[0]
    assert missing_section.count("\n    ") == 21  # 20 keys + the "... and N more" line
    assert "more" in missing_section


def test_single_channel_stem_is_spread_over_three_channels(medicalnet_files: dict) -> None:
    path, tensors = medicalnet_files[10]
    mono, rgb = ResNet3D(10).eval(), ResNet3D(10, in_channels=3).eval()
    load_pretrained(mono, path)
    load_pretrained(rgb, path)
    assert torch.allclose(rgb.conv1.weight, tensors["conv1.weight"].repeat(1, 3, 1, 1, 1) / 3)
    rgb.head.load_state_dict(mono.head.state_dict())
    volume = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():  # a replicated grey volume gives the pretrained single-channel response
        assert torch.allclose(rgb(volume.repeat(1, 3, 1, 1, 1)), mono(volume), atol=1e-5)


def test_multi_channel_stem_is_averaged_for_one_channel(tmp_path: Path) -> None:
    source = DenseNet3D(in_channels=3, growth_rate=4, block_config=(2, 2), num_init_features=8)
    path = tmp_path / "rgb.pt"
    torch.save(source.state_dict(), path)
    target = DenseNet3D(in_channels=1, growth_rate=4, block_config=(2, 2), num_init_features=8)
    load_pretrained(target, path)
    assert torch.allclose(target.conv1.weight, source.conv1.weight.mean(dim=1, keepdim=True))


def test_file_is_hashed_only_when_a_sha256_is_configured(medicalnet_files: dict, monkeypatch) -> None:
    def refuse(path: object) -> str:
        raise AssertionError("hashed without a configured sha256")

    monkeypatch.setattr(pretrained_module, "file_sha256", refuse)
    assert load_pretrained(ResNet3D(10), medicalnet_files[10][0]).loaded > 0


def test_sha256_is_checked(medicalnet_files: dict) -> None:
    path, _ = medicalnet_files[10]
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    report = load_pretrained(ResNet3D(10), path, sha256=actual.upper())
    assert report.sha256 == actual and report.as_params()["pretrained.sha256"] == actual
    wrong = "0" * 64
    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained(ResNet3D(10), path, sha256=wrong)
    assert str(path) in str(error.value) and wrong in str(error.value) and actual in str(error.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "resnet_10.pth"
    with pytest.raises(PretrainedWeightsError, match="resnet_10.pth.*model.pretrained.path"):
        load_pretrained(ResNet3D(10), missing)


class _WritesMarkerWhenUnpickled:
    """Unpickling calls ``open(marker, "w")``: proof that a pickle could run arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    tiny = CNN3D(widths=(2,))
    torch.save({"state_dict": tiny.state_dict(), "payload": _WritesMarkerWhenUnpickled(marker)}, path)
    with pytest.raises(PretrainedWeightsError, match="weights_only") as error:
        load_pretrained(tiny, path)
    assert not marker.exists()
    assert "weights_only=False" not in str(error.value)  # never suggest running the file's code
    assert "io.open" in str(error.value)  # the refused object (what the payload unpickles to) is named


def test_lightning_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = SEResNet3D(10, widths=(4, 8, 8, 8), attention_reduction=4)
    checkpoint = {
        "epoch": 3,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {f"net.{k}": v for k, v in trained.state_dict().items()}
        | {"loss.pos_weight": torch.tensor([3.0])},
    }
    path = tmp_path / "epoch=3.ckpt"
    torch.save(checkpoint, path)
    torch.manual_seed(1)
    restored = SEResNet3D(10, widths=(4, 8, 8, 8), attention_reduction=4)
    report = load_pretrained(restored, path)
    assert report.format == "lightning"
    restored_state = restored.state_dict()
    for key, value in trained.state_dict().items():
        if key.startswith("head."):
            assert not torch.equal(restored_state[key], value), f"{key} must stay freshly initialised"
        else:
            assert torch.equal(restored_state[key], value), key


def test_plain_state_dict_with_dataparallel_prefix(tmp_path: Path) -> None:
    source = CNN3D(widths=(2, 4))
    path = tmp_path / "weights.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    target = CNN3D(widths=(2, 4))
    assert load_pretrained(target, path).format == "state_dict"
    assert torch.equal(target.features[1][0].weight, source.features[1][0].weight)


@pytest.mark.parametrize("content", [b"", b"weights are on the other disk\n", b"PK\x03\x04 truncated zip"],
                         ids=["empty", "text", "truncated"])
def test_unreadable_file_is_named_without_unsafe_advice(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "resnet_10.pth"
    path.write_bytes(content)
    with pytest.raises(PretrainedWeightsError, match="resnet_10.pth: not a readable PyTorch checkpoint") as error:
        load_pretrained(CNN3D(widths=(2,)), path)
    assert "weights_only=False" not in str(error.value)


def test_unrecognised_content_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(PretrainedWeightsError, match="Cannot recognise"):
        load_pretrained(CNN3D(widths=(2,)), path)
    with pytest.raises(ValueError, match="format"):
        load_pretrained(CNN3D(widths=(2,)), path, format="onnx")
