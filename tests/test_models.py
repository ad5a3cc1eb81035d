"""Network contract (shapes, gradients, trainability), attention-as-a-switch, and complexity counting.

Most checks use tiny widths: the contract does not depend on width, and full-size 3D nets are slow on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from lungexp.models import (
    CNN3D,
    CBAMResNet3D,
    DenseNet3D,
    ResNet3D,
    SEResNet3D,
    count_flops,
    count_parameters,
    model_summary,
)

TINY_RESNET_WIDTHS = (4, 8, 8, 8)

TINY_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "cnn3d": lambda c: CNN3D(in_channels=c, widths=(4, 8, 8), dropout=0.0),
    "cnn3d-double-conv": lambda c: CNN3D(in_channels=c, widths=(4, 8), convs_per_block=2, dropout=0.0),
    "resnet3d-10-B": lambda c: ResNet3D(10, in_channels=c, widths=TINY_RESNET_WIDTHS, dropout=0.0),
    "resnet3d-18-A": lambda c: ResNet3D(18, in_channels=c, widths=TINY_RESNET_WIDTHS, dropout=0.0),
    "resnet3d-34-dilated": lambda c: ResNet3D(
        34, in_channels=c, widths=(2, 4, 4, 4), dilated=True, dropout=0.0
    ),
    "resnet3d-50-B": lambda c: ResNet3D(50, in_channels=c, widths=(4, 8, 8, 8), dropout=0.0),
    "resnet3d-50-A": lambda c: ResNet3D(
        50, in_channels=c, widths=(2, 4, 4, 4), shortcut_type="A", dropout=0.0
    ),
    "densenet3d": lambda c: DenseNet3D(
        in_channels=c, growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=8, bn_size=2, dropout=0.0
    ),
    "se_resnet3d": lambda c: SEResNet3D(18, in_channels=c, widths=TINY_RESNET_WIDTHS, attention_reduction=4),
    "cbam_resnet3d": lambda c: CBAMResNet3D(
        18, in_channels=c, widths=TINY_RESNET_WIDTHS, attention_reduction=4
    ),
}


@pytest.fixture(autouse=True, scope="module")
def _single_intra_op_thread() -> Iterator[None]:
    """Tiny networks are dominated by per-op thread synchronisation: one thread is as fast on an idle box
    and up to 10x faster when other jobs share the CPU cores (OpenMP barriers then spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(name: str, in_channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return TINY_FACTORIES[name](in_channels)


@pytest.mark.parametrize("name", sorted(TINY_FACTORIES))
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [20, 32, 48, 64])  # 20: the lidc_crops and luna16_fpr presets
def test_output_is_one_logit_per_sample(name: str, in_channels: int, size: int) -> None:
    net = _tiny(name, in_channels)
    logits = net(torch.randn(2, in_channels, size, size, size))
    assert logits.shape == (2, 1)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("in_channels", [1, 3])
def test_full_size_resnet18_forward(in_channels: int) -> None:
    net = ResNet3D(18, in_channels=in_channels).eval()
    with torch.no_grad():
        assert net(torch.randn(1, in_channels, 32, 32, 32)).shape == (1, 1)


def test_num_classes_sets_the_head_width() -> None:
    net = ResNet3D(10, num_classes=3, widths=TINY_RESNET_WIDTHS)
    assert net(torch.randn(2, 1, 32, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name", sorted(TINY_FACTORIES))
def test_contract_attributes(name: str) -> None:
    """The LightningModule and the fine-tuning code find the head and the stem by name."""
    net = _tiny(name, 3)
    assert isinstance(net.head, nn.Module)
    assert isinstance(net.head[-1], nn.Linear)
    assert isinstance(net.stem_conv, nn.Conv3d)
    assert net.stem_conv.in_channels == 3


@pytest.mark.parametrize("name", sorted(TINY_FACTORIES))
def test_backward_gives_finite_grads_on_every_parameter(name: str) -> None:
    net = _tiny(name)
    logits = net(torch.randn(4, 1, 32, 32, 32))
    nn.functional.binary_cross_entropy_with_logits(
        logits.squeeze(1), torch.tensor([0.0, 1.0, 0.0, 1.0])
    ).backward()
    for parameter_name, parameter in net.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name


@pytest.mark.parametrize("name", sorted(TINY_FACTORIES))
def test_a_few_steps_decrease_the_loss_on_a_fixed_batch(name: str) -> None:
    net = _tiny(name)
    torch.manual_seed(1)
    inputs = torch.randn(4, 1, 32, 32, 32)
    targets = torch.tensor([0.0, 1.0, 0.0, 1.0])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net(inputs).squeeze(1), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_cnn3d_depth_is_the_number_of_widths() -> None:
    net = CNN3D(widths=(2, 2, 4, 4, 8, 8), dropout=0.0)
    assert len(net.features) == 6
    assert net(torch.randn(2, 1, 32, 32, 32)).shape == (2, 1)


def _shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in net.state_dict().items()}


@pytest.mark.parametrize("attention", ["se", "cbam"])
@pytest.mark.parametrize("depth", [18, 50])
def test_attention_only_adds_attention_parameters(attention: str, depth: int) -> None:
    """Attention on/off is the only difference: every other tensor has the same name and shape."""
    plain = _shapes(ResNet3D(depth, attention="none"))
    with_attention = _shapes(ResNet3D(depth, attention=attention))
    added = set(with_attention) - set(plain)
    assert set(plain) <= set(with_attention)
    assert {key: with_attention[key] for key in plain} == plain
    assert added and all(".attention." in key for key in added)
    blocks = sum(1 for key in plain if key.endswith(".bn1.weight") and key.startswith("layer"))
    assert len({key.split(".attention.")[0] for key in added}) == blocks  # one module per residual block


def test_attention_subclasses_are_resnet3d_with_attention() -> None:
    kwargs = {"widths": TINY_RESNET_WIDTHS, "attention_reduction": 4}
    assert _shapes(SEResNet3D(18, **kwargs)) == _shapes(ResNet3D(18, attention="se", **kwargs))
    assert _shapes(CBAMResNet3D(18, **kwargs)) == _shapes(ResNet3D(18, attention="cbam", **kwargs))
    with pytest.raises(ValueError, match="attention"):
        ResNet3D(18, attention="transformer")


def test_dilated_layout_has_the_same_parameters_but_more_compute() -> None:
    doubling_widths = (2, 4, 8, 16)  # like MedicalNet's, so every stage opens with a shortcut in both layouts
    strided = ResNet3D(10, widths=doubling_widths)
    dilated = ResNet3D(10, widths=doubling_widths, dilated=True)
    assert _shapes(strided) == _shapes(dilated)
    assert count_flops(dilated) > count_flops(strided)


def test_invalid_resnet_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="depth"):
        ResNet3D(101)
    with pytest.raises(ValueError, match="shortcut_type"):
        ResNet3D(18, shortcut_type="C", widths=TINY_RESNET_WIDTHS)


def test_resnet_parameter_counts_match_medicalnet_and_sum_of_numel() -> None:
    net = ResNet3D(18)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())
    # MedicalNet's README lists 32.99 M (ResNet-18) and 14.36 M (ResNet-10) parameters.
    assert round(count_parameters(net) / 1e6, 2) == 32.99
    assert round(count_parameters(ResNet3D(10)) / 1e6, 2) == 14.36


def test_frozen_parameters_still_count() -> None:
    net = _tiny("resnet3d-10-B")
    total = count_parameters(net)
    for parameter in net.parameters():
        parameter.requires_grad = False
    assert count_parameters(net) == total


def test_flops_grow_with_the_patch_and_leave_the_network_untouched() -> None:
    net = _tiny("resnet3d-18-A").train()
    running_mean = net.bn1.running_mean.clone()
    flops_32 = count_flops(net, (1, 1, 32, 32, 32))
    flops_64 = count_flops(net, (1, 1, 64, 64, 64))
    assert 0 < flops_32 < flops_64
    assert net.training
    assert torch.equal(net.bn1.running_mean, running_mean)


def test_model_summary_for_logging() -> None:
    net = _tiny("cnn3d", 3)
    summary = model_summary(net, in_channels=3)
    assert summary == {"params": count_parameters(net), "flops_32": count_flops(net, (1, 3, 32, 32, 32))}
    assert summary["flops_32"] > 0
