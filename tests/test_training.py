"""Tests of pipeline.training's imbalance wiring: sample classes, upsampling and sampler choice,
the criterion from params, and the train stage running with every remedy switched on."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO

from pipeline.losses import BinaryFocalLoss, FocalLoss, LossConfigError
from pipeline.manifest import TaskInfo
from pipeline.params import TrainParams, load_section
from pipeline.samplers import ShuffleEpochSampler, WeightedEpochSampler
from pipeline.training import balance, build_criterion, sample_classes
from stages import train as train_stage

MULTICLASS = TaskInfo("multiclass", ("good", "scratch", "hole"), "good")
MULTILABEL = TaskInfo("multilabel", ("good", "scratch", "hole"), "good")
CPU = torch.device("cpu")


def params(**changes: Any) -> TrainParams:
    return load_section(REPO / "params.yaml", "train", TrainParams).model_copy(update=changes)


def imbalanced() -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny uint8 images (N, 3, 4, 4), image i filled with value i, and multiclass targets:
    90 of class 0, then 5 of class 1 and 5 of class 2."""
    labels = torch.tensor([0] * 90 + [1] * 5 + [2] * 5, dtype=torch.int64)
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    return images.contiguous(), labels


def test_sample_classes_of_both_tasks() -> None:
    assert sample_classes(torch.tensor([2, 0, 1]), "multiclass") == [[2], [0], [1]]
    hot = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    assert sample_classes(hot, "multilabel") == [[0], [2], [0, 1]]  # 2: no defect = good


def test_defaults_shuffle_every_image_once_per_epoch() -> None:
    data, sampler = balance(imbalanced(), params(), MULTICLASS)
    assert isinstance(sampler, ShuffleEpochSampler)
    assert len(data[0]) == 100
    sampler.set_epoch(3)
    assert sorted(sampler) == list(range(100))


def test_upsampling_repeats_rare_images_with_their_targets() -> None:
    (images, labels), _ = balance(
        imbalanced(), params(upsample_target_ratio=0.5, upsample_max_replications=8), MULTICLASS
    )
    counts = Counter(labels.tolist())
    assert counts == {0: 90, 1: 40, 2: 40}  # 5 images x 8: the cap, short of 0.5 x 90
    # every repeated image keeps its own target (image i was made for row i's label)
    rare = [int(img[0, 0, 0]) for img, label in zip(images, labels, strict=True) if label == 2]
    assert sorted(set(rare)) == [95, 96, 97, 98, 99] and len(rare) == 40


def test_weighted_sampler_draws_the_rare_class_far_above_its_share() -> None:
    data, sampler = balance(
        imbalanced(), params(sampler="weighted", sampler_mode="inv"), MULTICLASS
    )
    assert isinstance(sampler, WeightedEpochSampler)
    sampler.set_epoch(1)
    drawn = [int(data[1][i]) for i in sampler]
    assert len(drawn) == 100
    # inv weights give each class a third of the draws in expectation (std 4.7 here); its
    # natural share is 5 in 100
    assert 15 <= drawn.count(2) <= 55


def test_class_weights_and_focal_loss_from_params() -> None:
    _, labels = imbalanced()
    ce = build_criterion(params(class_weight_damping=1.0), MULTICLASS, labels, CPU)
    weight = ce.weight  # type: ignore[union-attr]
    assert isinstance(weight, torch.Tensor)
    assert weight[2] / weight[0] == pytest.approx(90 / 5)  # inverse frequency
    focal = build_criterion(
        params(loss="focal", focal_alpha=[0.2, 0.3, 0.5]), MULTICLASS, labels, CPU
    )
    assert isinstance(focal, FocalLoss)
    hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert isinstance(build_criterion(params(loss="focal"), MULTILABEL, hot, CPU), BinaryFocalLoss)


def test_a_focal_alpha_of_the_wrong_length_names_the_classes() -> None:
    with pytest.raises(LossConfigError, match=r"3 classes \(good, scratch, hole\)"):
        build_criterion(
            params(loss="focal", focal_alpha=[0.5, 0.5]), MULTICLASS, imbalanced()[1], CPU
        )


def test_train_stage_runs_with_every_imbalance_remedy_on(outputs: Path, tmp_path: Path) -> None:
    remedies = params(
        epochs=2,
        image_size=32,
        batch_size=16,
        sampler="weighted",
        sampler_mode="effective_num",
        upsample_target_ratio=0.3,
        loss="focal",
        class_weight_damping=0.5,
    )
    summary = train_stage.run(
        remedies,
        outputs / "raw",
        outputs / "data/interim/split.parquet",
        tmp_path / "model.pt",
        tmp_path / "train.json",
        tmp_path / "history.csv",
    )
    assert json.loads((tmp_path / "train.json").read_text()) == summary
    epochs_logged = (tmp_path / "history.csv").read_text().splitlines()[1:]
    assert len(epochs_logged) == 2
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    assert checkpoint["params"]["loss"] == "focal"
    assert checkpoint["params"]["sampler"] == "weighted"
