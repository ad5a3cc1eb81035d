"""Several checkpoints (e.g. the folds of a cross-validation) scored as one predictor, with test-time augmentation.

Members' **probabilities** are averaged, not their logits: members trained separately (on different folds, with
their own early stopping) put their logits on different scales, so a mean of logits lets the most confident
member outvote the others, while a mean of probabilities weighs each member equally and stays a probability
(nnU-Net averages its folds' softmax probabilities the same way). Test-time flips are averaged the same way
(:mod:`lungexp.models.tta`). Calibrated, each member's probability goes through that member's own calibrator
(fitted on its own validation predictions) before the mean: members trained apart are calibrated apart, and one
calibrator fitted on their validation predictions pooled fits none of them (docs/cross-validation.md "The same on the demo data").

An :class:`Ensemble` has the interface of :class:`~lungexp.inference.model.Predictor`, so ``predict`` and
``evaluate`` use either; an ensemble of one checkpoint without TTA gives that checkpoint's probabilities exactly.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lungexp.data.labels.label_rules import LabelRule
from lungexp.data.names import COVARIATES_KEY, IMAGE_KEY
from lungexp.evaluation.operating_point import pooled_threshold
from lungexp.inference.model import Batch, Predictor, normalized_batches
from lungexp.metrics.calibration import Calibrator, check_calibration
from lungexp.models.tta import check_tta, tta_probabilities
from lungexp.tracking.folds import fold_checkpoints
from lungexp.training.checkpoint import ModelRecipe
from lungexp.utils.errors import ConfigError

DATA_LOCATION_KEYS = ("root", "labels_csv")  # which dataset a data config means, for the leak check


def preprocessing(recipe: ModelRecipe) -> dict[str, object]:
    """What a member's input is made of; every member of an ensemble must agree on all of it."""
    return {"patch.size": recipe.patch.size, "patch.spacing_mm": list(recipe.patch.spacing_mm),
            "patch.pad_hu": recipe.patch.pad_hu, "hu_window": list(recipe.hu_window),
            "normalize": recipe.normalize, "in_channels": recipe.in_channels}


def target(recipe: ModelRecipe) -> dict[str, object]:
    """What a member's probability is the probability of: its task (which CSV column is the label), its target's
    heads, and the ``data.label_rule`` that relabelled it (normalised: ``">= 4"`` is ``">=4"``); every member must agree on all
    of it, or the mean mixes different positive classes (malignancy >= 3 with >= 4)."""
    rule = LabelRule.from_config(recipe.data.get("label_rule"))
    return {"data.task": recipe.task, "data.label_rule": None if rule is None else rule.as_config(),
            "target": recipe.targets.describe().removeprefix("target=")}


def inputs(recipe: ModelRecipe) -> dict[str, object]:
    """Whether a member reads the image and which covariates, in its order: every member must read the same."""
    return {"model.covariates": list(recipe.covariates), "model.images": recipe.images}


# What members must agree on, and what to say when they do not.
AGREEMENTS: tuple[tuple[str, Callable[[ModelRecipe], dict[str, object]], str], ...] = (
    ("preprocessing", preprocessing, "ensemble only models trained on the same patches"),
    ("target", target, "ensemble only models trained to predict the same labels"),
    ("covariates", inputs, "ensemble only models that read the same covariates"),
)


class Ensemble:
    """The mean probability of several :class:`Predictor` members over the views of ``tta``; calibrated
    (:meth:`calibrate`), the mean of the members' calibrated probabilities.

    Args:
        members: predictors sharing their preprocessing (:func:`preprocessing`) and target (:func:`target`), each
            with its calibrator or none.
        tta: ``none`` or ``flips`` (see :mod:`lungexp.models.tta`).

    Raises :class:`ConfigError` naming the first member and one that differs, and the field, when the
    members' preprocessing or target differs.
    """

    def __init__(self, members: Sequence[Predictor], tta: str = "none") -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one checkpoint")
        for what, settings, advice in AGREEMENTS:
            first = settings(members[0].recipe)
            for member in members[1:]:
                differing = {key: value for key, value in settings(member.recipe).items() if first[key] != value}
                if differing:
                    key = next(iter(differing))
                    raise ConfigError(f"the checkpoints {members[0].path} and {member.path} cannot be ensembled: "
                                      f"their {what} differs in {', '.join(differing)} ({key}={first[key]} vs "
                                      f"{differing[key]}); {advice}")
        self.members = list(members)
        self.tta = check_tta(tta)
        if self.tta != "none" and not self.recipe.images:
            raise ConfigError(f"tta={tta} mirrors the image, and {members[0].path} (model=tabular) reads none: use "
                              "tta=none")

    @property
    def recipe(self) -> ModelRecipe:
        """The first member's recipe: its preprocessing is every member's."""
        return self.members[0].recipe

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def precision(self) -> str:
        return self.members[0].precision

    @property
    def net(self) -> nn.Module:
        """The first member's network: what Grad-CAM explains, on the plain input."""
        return self.members[0].net

    @property
    def paths(self) -> list[Path]:
        return [member.path for member in self.members]

    @property
    def evaluation(self) -> dict | None:
        """The first member's ``eval`` config (the folds of a CV share it)."""
        return self.members[0].evaluation

    @property
    def calibrators(self) -> list[Calibrator] | None:
        """Each member's calibrator, or None when the ensemble is not calibrated."""
        calibrators = [member.operating_point.calibrator for member in self.members]
        return None if any(calibrator is None for calibrator in calibrators) else cast(list[Calibrator], calibrators)

    @property
    def calibration(self) -> str:
        """The calibration method (``none`` when uncalibrated)."""
        calibrators = self.calibrators
        return "none" if calibrators is None else getattr(calibrators[0], "method", "custom")

    @property
    def description(self) -> str:
        """For the printed line: the checkpoint, or how many, and the TTA and calibration used."""
        model = str(self.members[0].path) if len(self.members) == 1 else f"an ensemble of {len(self.members)} checkpoints"
        extras = [f"tta={self.tta}"] if self.tta != "none" else []
        if self.calibration != "none":
            extras.append(f"calibration={self.calibration}")
        return model + (f" ({', '.join(extras)})" if extras else "")

    def calibrate(self, method: str, key: str = "calibration") -> list[Path]:
        """Calibrate every member with ``method`` (chosen by the option ``key``, which messages name): the
        calibrator its checkpoint stores, or one fitted on its own validation predictions. Members without
        enough validation predictions to fit one (:func:`~lungexp.metrics.calibration.fit_calibrator`: of both
        classes; of right and wrong most probable classes for a multiclass head) leave the ensemble uncalibrated
        (with a warning); returns their checkpoints. The calibrator is of the primary head; a method its kind does not have is refused
        (:func:`~lungexp.metrics.calibration.check_calibration`), naming the members' target."""
        target = self.recipe.targets
        try:
            check_calibration(method, key, target.primary.kind)
        except ConfigError as error:
            raise ConfigError(f"{self.members[0].path} was trained for {target.describe()}: {error}") from None
        for member in self.members:
            member.calibrate(method, key)
        uncalibrated = [member.path for member in self.members
                        if method != "none" and member.operating_point.calibrator is None]
        if uncalibrated:
            for member in self.members:
                # all or none: a mean of calibrated and raw probabilities means neither
                member.operating_point = member.operating_point.uncalibrated()
        return uncalibrated

    def decision_threshold(self, rule: str | float) -> float:
        """The mean of the members' thresholds, each chosen on its own (calibrated, when calibrated) validation
        predictions, as the pooled report of a CV does; one member's exactly."""
        return pooled_threshold(member.operating_point.threshold(rule) for member in self.members)

    def member_probabilities(self, batches: Iterable[Batch]) -> np.ndarray:
        """Each member's TTA probability of batches of normalised ``(B, C, D, H, W)`` patches (and their covariates:
        TTA mirrors the image, never the covariates), uncalibrated, float32: ``(members, patches)`` for one binary
        column, ``(members, patches, columns)`` for a head of several
        (:func:`~lungexp.models.heads.target_probabilities`)."""
        outputs = [torch.stack([self._tta(member, batch) for member in self.members]) for batch in batches]
        return torch.cat(outputs, dim=1).numpy() if outputs else np.zeros((len(self.members), 0), dtype=np.float32)

    def _tta(self, member: Predictor, batch: Batch) -> torch.Tensor:
        covariates = batch.get(COVARIATES_KEY)
        if IMAGE_KEY not in batch:  # model=tabular
            return member.batch_probabilities(None, covariates)
        return tta_probabilities(lambda images: member.batch_probabilities(images, covariates), batch[IMAGE_KEY],
                                 self.tta)

    def scores(self, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray | None]:
        """The uncalibrated mean probability of each patch (float32, as :meth:`Predictor.probabilities`) and the
        calibrated one (float64; None when uncalibrated)."""
        members = self.member_probabilities(batches)
        plain = members[0] if len(members) == 1 else members.mean(axis=0, dtype=np.float32)
        if self.calibrators is None or not members.shape[1]:
            return plain, None
        calibrated = [member.operating_point.apply(probabilities.astype(np.float64))
                      for member, probabilities in zip(self.members, members, strict=True)]
        return plain, np.mean(calibrated, axis=0)

    def probabilities(self, batches: Iterable[Batch]) -> np.ndarray:
        """The uncalibrated mean probabilities of normalised batches, concatenated (float32)."""
        return self.scores(batches)[0]

    def patch_probabilities(self, hu_patches: np.ndarray | None, batch_size: int = 64,
                            covariates: np.ndarray | None = None) -> np.ndarray:
        """Probabilities of raw HU patches ``(N, C, D, H, W)`` (with their ``(N, k)`` covariates for members that read
        them; for members that read no image, ``None`` and the covariates), normalised with the members' window,
        calibrated when the ensemble is (float32)."""
        plain, calibrated = self.scores(normalized_batches(self.recipe.window, hu_patches, batch_size, covariates))
        return plain if calibrated is None else calibrated.astype(np.float32)


def load_members(ckpt_path: str | Sequence[str] | None, cv_run: str | None, tracking_uri: str,
                 device: str = "auto", precision: str | None = None) -> list[Predictor]:
    """The predictors of the checkpoints :func:`checkpoint_paths` names (a CV's downloaded only while read)."""
    with tempfile.TemporaryDirectory() as folder:
        return [Predictor(path, device=device, precision=precision)
                for path in checkpoint_paths(ckpt_path, cv_run, tracking_uri, folder)]


def checkpoint_paths(ckpt_path: str | Sequence[str] | None, cv_run: str | None, tracking_uri: str,
                     download_to: str | Path) -> list[Path]:
    """The checkpoints ``ckpt_path`` (one, or a list) or ``cv_run`` (a CV parent run's folds) name; exactly one
    of the two must be given."""
    if (ckpt_path is None) == (cv_run is None):
        raise ConfigError("give the model as ckpt_path=FILE, ckpt_path=[a.ckpt,b.ckpt] or cv_run=<MLflow run id "
                          "of a cross-validation's parent run>, and only one of them")
    if cv_run is not None:
        return fold_checkpoints(tracking_uri, str(cv_run), download_to)
    assert ckpt_path is not None  # exactly one of the two, checked above
    paths = [ckpt_path] if isinstance(ckpt_path, str | Path) else list(ckpt_path)
    if not paths:
        raise ConfigError("ckpt_path=[]: name at least one checkpoint")
    return [Path(path) for path in paths]


def check_unseen_data(ensemble: Ensemble, evaluated: Mapping[str, Any],
                      locate: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict) -> None:
    """Refuse to evaluate members trained on different splits (the folds of a CV) on the dataset they trained on
    (the same ``root`` and ``labels_csv``): each fold's test scans trained the other members, so the metrics would
    leak. Members of one split (or copies of one checkpoint) are scored on their common test split as a single
    checkpoint is. Other scans, or another labels CSV of the same scans (e.g. patients set aside before the CV),
    are the user's word that the folds never saw them.

    ``evaluated``: the evaluated data's files (:data:`DATA_LOCATION_KEYS`), resolved; ``locate`` resolves a
    member's stored data config to its files the same way (its interpolations are stored unresolved).
    """
    splits = {json.dumps(member.recipe.data.get("split"), sort_keys=True, default=str) for member in ensemble.members}
    trained_here = [member.path for member in ensemble.members
                    if all(_same_path(locate(member.recipe.data).get(key), evaluated.get(key))
                           for key in DATA_LOCATION_KEYS)]
    if len(splits) > 1 and trained_here:
        raise ConfigError(f"the ensemble's members were trained on different splits of data.root={evaluated.get('root')} "
                          f"with data.labels_csv={evaluated.get('labels_csv')} (e.g. {trained_here[0]}), so every sample of "
                          "it trained some member: evaluating them together there would leak. Evaluate a fold "
                          "ensemble on data the folds never saw (data.root=OTHER, or data.labels_csv=a CSV of "
                          "patients set aside before the CV, with split=all), or each fold checkpoint on its own "
                          "test split")


def _same_path(trained: Any, evaluated: Any) -> bool:
    if trained is None or evaluated is None:
        return trained is evaluated
    return Path(str(trained)).expanduser().resolve() == Path(str(evaluated)).expanduser().resolve()
