"""Test-time augmentation (``eval.tta``): the mean probability over the 8 mirrorings of the three spatial axes, in
the test stage of a run as in ``predict``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from lungexp.data.names import POINT_COLUMNS
from lungexp.evaluation.types import EvaluationOptions
from lungexp.inference.candidate_scoring import predict_candidates
from lungexp.inference.ensemble import Ensemble
from lungexp.inference.model import Predictor
from lungexp.inference.scans import open_scans
from lungexp.models.tta import FLIPS, tta_probabilities
from lungexp.utils.errors import ConfigError
from tests.helpers.cli import printed, run_entry_point
from tests.helpers.config import tiny_run_overrides


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


@pytest.mark.slow
def test_a_run_tested_with_flips_logs_what_its_checkpoint_scores_with_flips(synthetic_root: Path, mlflow_dir: Path,
                                                                          tmp_path: Path) -> None:
    """``lungexp.run eval.tta=flips``: the logged test probabilities are the best checkpoint's mean over the 8
    mirrorings (as ``predict``/``evaluate`` score it with tta=flips), not its plain ones."""
    done = run_entry_point("run", [*tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", mlflow_dir),
                                   "trainer.max_epochs=1", "callbacks.lr_monitor=null", "data.max_negatives_per_scan=2",
                                   "eval.bootstrap=0", "eval.montage_k=0", "eval.tta=flips", "task_name=tta_flips"],
                           tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    checkpoint = printed(r"best checkpoint\s+(\S+\.ckpt)", done.stdout)
    run_id = printed(r"MLflow run id\s+([0-9a-f]{32})", done.stdout)
    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_dir}/mlflow.db")
    logged = pd.read_csv(client.download_artifacts(run_id, "predictions/test_predictions.csv", str(tmp_path / "dl")),
                         dtype={"seriesuid": str})
    assert client.get_run(run_id).data.params["eval.tta"] == "flips"
    assert "gradcam.png" in {a.path for a in client.list_artifacts(run_id)}  # Grad-CAM still drawn

    scans, points = open_scans(synthetic_root), logged[POINT_COLUMNS]
    member = Predictor(checkpoint, device="cpu")
    flipped, plain = (predict_candidates(Ensemble([member], tta=tta), scans, points)["probability"].to_numpy()
                      for tta in ("flips", "none"))
    np.testing.assert_allclose(logged["probability"], flipped, atol=1e-6)
    assert np.abs(logged["probability"] - plain).max() > 1e-4  # the flips changed the scores
