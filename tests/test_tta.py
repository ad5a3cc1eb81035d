"""Test-time augmentation (``eval.tta``): the mean probability over the 8 mirrorings of the three spatial axes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lungexp.models.tta import FLIPS, tta_probabilities
from lungexp.reporting.options import EvaluationOptions
from lungexp.utils.errors import ConfigError


def probabilities_of(net: nn.Module):
    return lambda images: torch.sigmoid(net(images).squeeze(-1))


class MeanIntensity(nn.Module):
    """Invariant to every flip: a function of the mean voxel value only."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3, 4)).unsqueeze(-1) * 3.0


def oriented_net() -> nn.Module:
    """A convolution then a linear layer over positions: mirroring the input changes its output."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.LazyLinear(1)).eval()


def test_the_views_are_the_eight_distinct_mirrorings() -> None:
    assert len(FLIPS) == 8 and len(set(FLIPS)) == 8 and () in FLIPS and (2, 3, 4) in FLIPS


def test_flips_of_a_flip_invariant_network_change_nothing() -> None:
    images = torch.randn(3, 1, 6, 6, 6)
    plain = tta_probabilities(probabilities_of(MeanIntensity()), images, "none")
    torch.testing.assert_close(tta_probabilities(probabilities_of(MeanIntensity()), images, "flips"), plain)


@torch.inference_mode()
def test_flips_average_the_eight_hand_flipped_outputs() -> None:
    net = oriented_net()
    images = torch.randn(4, 1, 6, 6, 6)
    score = probabilities_of(net)
    by_hand = [score(images),
               score(images.flip(2)), score(images.flip(3)), score(images.flip(4)),
               score(images.flip(2).flip(3)), score(images.flip(2).flip(4)), score(images.flip(3).flip(4)),
               score(images.flip(2).flip(3).flip(4))]
    expected = torch.stack(by_hand).mean(dim=0)
    tested = tta_probabilities(score, images, "flips")
    torch.testing.assert_close(tested, expected)
    assert not torch.allclose(tested, score(images), atol=1e-4)  # the network is not invariant: TTA did something


def test_an_unknown_tta_mode_is_one_message_naming_the_key() -> None:
    assert EvaluationOptions.from_config({"tta": "flips"}).tta == "flips"
    with pytest.raises(ConfigError, match=r"eval.tta='flip' is not a valid choice \(did you mean 'flips'\?\)"):
        EvaluationOptions.from_config({"tta": "flip"})
