"""Tests of pipeline.training's imbalance wiring: sample classes, upsampling and sampler choice,
the criterion from params, and the train stage running with every remedy switched on."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO

from pipeline.errors import ApexLoopError
from pipeline.losses import BinaryFocalLoss, FocalLoss, LossConfigError
from pipeline.manifest import TaskInfo, read_manifest
from pipeline.params import TrainParams, load_section
from pipeline.samplers import ShuffleEpochSampler, WeightedEpochSampler
from pipeline.training import EpochLog, balance, build_criterion, monitored, sample_classes
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


def _train_on(outputs: Path, work: Path, **changes: Any) -> tuple[dict[str, Any], list[EpochLog]]:
    """The train stage on the tiny pipeline's split with `changes`; (summary, history)."""
    settings = params(image_size=32, batch_size=16, **changes)
    split = outputs / "data/interim/split.parquet"
    summary = train_stage.run(
        settings, outputs / "raw", split, work / "m.pt", work / "t.json", work / "h.csv"
    )
    with (work / "h.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    history = [
        EpochLog(
            int(r["epoch"]),
            float(r["train_loss"]),
            float(r["val_loss"]),
            float(r["val_macro_f1"]),
            float(r["val_miss_rate"]) if r["val_miss_rate"] else None,
        )
        for r in rows
    ]
    return summary, history


def test_early_stopping_stops_patience_epochs_after_the_last_gain(
    outputs: Path, tmp_path: Path
) -> None:
    summary, history = _train_on(outputs, tmp_path, epochs=8, lr=0.003, patience=1)
    best = summary["best_epoch"]
    key = [monitored(entry, "macro_f1") for entry in history]
    # stopped exactly `patience` epochs after the last improvement, or ran out of epochs ...
    assert summary["epochs_run"] == len(history) == min(8, best + 1)
    # ... and the kept epoch is the first best one: no earlier epoch is as good, no later better
    assert all(k < key[best - 1] for k in key[: best - 1])
    assert all(k <= key[best - 1] for k in key[best:])


@pytest.mark.parametrize("monitor", ["macro_f1", "miss_rate"])
def test_the_best_epoch_is_the_best_by_the_monitored_metric(
    outputs: Path, tmp_path: Path, monitor: str
) -> None:
    _, info = read_manifest(outputs / "data/interim/split.parquet", "split")
    summary, history = _train_on(outputs, tmp_path, epochs=3, lr=0.01, monitor=monitor)
    assert summary["monitor"] == monitor and summary["epochs_run"] == 3
    best = max(history, key=lambda entry: monitored(entry, monitor))
    assert summary["best_epoch"] == min(  # the first of equally good epochs is kept
        e.epoch for e in history if monitored(e, monitor) == monitored(best, monitor)
    )
    assert info.task in ("multiclass", "multilabel")


def test_monitoring_the_miss_rate_without_defects_on_val_is_a_clear_error() -> None:
    entry = EpochLog(1, 0.5, 0.5, 0.4, None)
    assert monitored(entry, "macro_f1") == (0.4, 0.0)
    with pytest.raises(ApexLoopError, match="no defective images"):
        monitored(entry, "miss_rate")
