"""Tests of pipeline.training's imbalance wiring: sample classes, upsampling and sampler choice,
the criterion from params, and the train stage running with every remedy switched on."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, read_curves
from torch import nn

from pipeline.checkpoints import load_model
from pipeline.distributed import Process
from pipeline.errors import ApexLoopError
from pipeline.losses import BinaryFocalLoss, FocalLoss, LossConfigError
from pipeline.manifest import TaskInfo
from pipeline.models import DEFECT_MAP, build_model
from pipeline.params import TrainParams, load_section
from pipeline.samplers import ShuffleEpochSampler, WeightedEpochSampler
from pipeline.training import (
    AUGMENT_STREAM,
    PASTE_STREAM,
    EpochLog,
    Job,
    Loop,
    Side,
    augment_place,
    balance,
    build_criterion,
    build_optimizer,
    build_scheduler,
    loader_workers,
    monitored,
    rank_generator,
    sample_classes,
)
from pipeline.transforms import BatchAugment
from stages import train as train_stage

MULTICLASS = TaskInfo("multiclass", ("good", "scratch", "hole"), "good")
MULTILABEL = TaskInfo("multilabel", ("good", "scratch", "hole"), "good")
CPU = torch.device("cpu")
ONE = Process(0, 1)


def params(**changes: Any) -> TrainParams:
    return load_section(REPO / "params.yaml", "train", TrainParams).model_copy(update=changes)


def imbalanced() -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny uint8 images (N, 3, 4, 4), image i filled with value i, and multiclass targets:
    90 of class 0, then 5 of class 1 and 5 of class 2 (rows 95-99)."""
    labels = torch.tensor([0] * 90 + [1] * 5 + [2] * 5, dtype=torch.int64)
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    return images.contiguous(), labels


def test_sample_classes_of_both_tasks() -> None:
    assert sample_classes(torch.tensor([2, 0, 1]), "multiclass") == [[2], [0], [1]]
    hot = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    assert sample_classes(hot, "multilabel") == [[0], [2], [0, 1]]  # 2: no defect = good


def test_defaults_shuffle_every_image_once_per_epoch() -> None:
    pool, sampler = balance(imbalanced()[1], params(), MULTICLASS, ONE)
    assert isinstance(sampler, ShuffleEpochSampler)
    assert pool.tolist() == list(range(100))
    sampler.set_epoch(3)
    assert sorted(sampler) == list(range(100))


def test_upsampling_repeats_rare_images_by_index() -> None:
    _, labels = imbalanced()
    pool, sampler = balance(
        labels, params(upsample_target_ratio=0.5, upsample_max_replications=8), MULTICLASS, ONE
    )
    assert Counter(labels[pool].tolist()) == {0: 90, 1: 40, 2: 40}  # 5 x 8: the cap
    assert Counter(pool.tolist())[97] == 8 and len(sampler) == len(pool)


def test_weighted_sampler_draws_the_rare_class_far_above_its_share() -> None:
    _, labels = imbalanced()
    pool, sampler = balance(labels, params(sampler="weighted", sampler_mode="inv"), MULTICLASS, ONE)
    assert isinstance(sampler, WeightedEpochSampler)
    sampler.set_epoch(1)
    drawn = labels[pool[list(sampler)]].tolist()
    assert len(drawn) == 100
    # inv weights give each class a third of the draws in expectation (std 4.7 here); its
    # natural share is 5 in 100
    assert 15 <= drawn.count(2) <= 55


def test_ranks_draw_disjoint_shards_of_one_weighted_epoch() -> None:
    _, labels = imbalanced()
    settings = params(sampler="weighted", sampler_mode="inv")
    shards = []
    for rank in range(2):
        pool, sampler = balance(labels, settings, MULTICLASS, Process(rank, 2))
        sampler.set_epoch(4)
        shards.append(pool[list(sampler)].tolist())
    whole, whole_sampler = balance(labels, settings, MULTICLASS, ONE)
    whole_sampler.set_epoch(4)
    assert len(shards[0]) == len(shards[1]) == 50
    interleaved = [i for pair in zip(*shards, strict=True) for i in pair]
    assert interleaved == whole[list(whole_sampler)].tolist()


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


def _train_on(outputs: Path, work: Path, **changes: Any) -> tuple[dict[str, Any], list[EpochLog]]:
    """The train stage on the tiny pipeline's split with `changes`; (summary, history read
    back from the DVCLive curves)."""
    settings = params(image_size=32, batch_size=16, **changes)
    split = outputs / "data/interim/split.parquet"
    summary = train_stage.run(
        settings, outputs / "raw", split, work / "m.pt", work / "live", work / "state"
    )
    curves = read_curves(work / "live")
    history = [
        epoch_log(
            epoch=i + 1,
            val_macro_f1=curves["val/macro_f1"][i],
            val_miss_rate=curves["val/miss_rate"][i] if "val/miss_rate" in curves else None,
        )
        for i in range(len(curves["val/loss"]))
    ]
    return summary, history


def epoch_log(**fields: Any) -> EpochLog:
    """An EpochLog with neutral values except `fields`."""
    neutral = {name: 0.0 for name in EpochLog.__dataclass_fields__} | {"epoch": 1}
    return EpochLog(**(neutral | fields))


@pytest.mark.parametrize("augment_on", ["loader", "device"])
def test_train_stage_runs_with_every_remedy_on(
    outputs: Path, tmp_path: Path, augment_on: str
) -> None:
    summary, history = _train_on(
        outputs,
        tmp_path,
        augment_on=augment_on,
        epochs=2,
        sampler="weighted",
        sampler_mode="effective_num",
        upsample_target_ratio=0.3,
        loss="focal",
        class_weight_damping=0.5,
        mix="defect_cutmix",
        mix_prob=1.0,
        rotate_degrees=10.0,
        crop_scale_min=0.8,
        optimizer="sgd",
        lr=0.01,
        schedule="onecycle",
        warmup_epochs=1.0,
        ema_decay=0.9,
        decode_cache="disk",
        defect_map_weight=0.5,
    )
    written = json.loads((tmp_path / "live/metrics.json").read_text())
    assert {k: v for k, v in written.items() if k != "step"} == summary
    assert summary["epochs_run"] == len(history) == 2
    curves = read_curves(tmp_path / "live")
    for name in ("train/loss", "val/loss", "train/accuracy", "val/macro_f1", "train_val_gap", "lr"):
        assert len(curves[name]) == 2, name
    assert curves["train_val_gap"] == pytest.approx(
        [t - v for t, v in zip(curves["train/accuracy"], curves["val/accuracy"], strict=True)],
        abs=1e-4,
    )
    assert len(list((tmp_path / "state/decoded").glob("*.u8"))) == 2  # train and val sides
    checkpoint = torch.load(tmp_path / "m.pt", weights_only=True)
    assert checkpoint["params"]["mix"] == "defect_cutmix"
    assert checkpoint["params"]["sampler"] == "weighted"
    # the defect map trained beside the classifier; the checkpoint is the classifier alone
    assert not [key for key in checkpoint["state_dict"] if key.startswith(DEFECT_MAP)]
    load_model(tmp_path / "m.pt")  # strict: the classifier's tensors, nothing else


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
    summary, history = _train_on(outputs, tmp_path, epochs=3, lr=0.01, monitor=monitor)
    assert summary["monitor"] == monitor and summary["epochs_run"] == 3
    best = max(history, key=lambda entry: monitored(entry, monitor))
    assert summary["best_epoch"] == min(  # the first of equally good epochs is kept
        e.epoch for e in history if monitored(e, monitor) == monitored(best, monitor)
    )


def test_monitoring_the_miss_rate_without_defects_on_val_is_a_clear_error() -> None:
    entry = epoch_log(val_macro_f1=0.4, val_miss_rate=None)
    assert monitored(entry, "macro_f1") == (0.4, 0.0)
    with pytest.raises(ApexLoopError, match="no defective images"):
        monitored(entry, "miss_rate")


def learning_rates(settings: TrainParams, steps_per_epoch: int = 10) -> list[float]:
    """The lr of every optimiser step of a run with `settings`."""
    optimizer = build_optimizer(nn.Linear(2, 2), settings)
    scheduler = build_scheduler(optimizer, settings, steps_per_epoch)
    rates = []
    for _ in range(settings.epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_warms_up_linearly_from_a_25th_then_decays_towards_zero() -> None:
    rates = learning_rates(params(epochs=4, lr=0.1, warmup_epochs=1.0))
    assert rates[0] == pytest.approx(0.1 / 25)
    steps = [b - a for a, b in itertools.pairwise(rates[:11])]
    assert steps == pytest.approx([steps[0]] * 10)  # linear up to the peak at step 10
    assert rates[10] == pytest.approx(0.1)
    assert all(b < a for a, b in itertools.pairwise(rates[10:]))
    assert rates[-1] < 0.1 * 0.01


def test_onecycle_peaks_where_the_warm_up_ends() -> None:
    rates = learning_rates(params(epochs=4, lr=0.1, schedule="onecycle", warmup_epochs=1.0))
    assert max(range(len(rates)), key=rates.__getitem__) in (9, 10)
    assert max(rates) == pytest.approx(0.1, rel=0.01)
    assert rates[-1] < rates[0] < 0.1


def test_sgd_has_nesterov_momentum_and_leaves_frozen_parameters_out() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, params(optimizer="sgd", momentum=0.9))
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9
    assert {id(p) for p in group["params"]} == {id(p) for p in model[1].parameters()}


def test_samples_carry_boxes_only_for_defect_aware_cutmix() -> None:
    """Boxes feed defect-aware CutMix alone; otherwise they are not augmented along, and the
    pixels are the same either way."""
    images, labels = imbalanced()
    boxes = [
        (torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([int(label)]))
        if label
        else (torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64))
        for label in labels.tolist()
    ]
    side = Side(images, labels, boxes)
    seen = {}
    for mix in ("none", "defect_cutmix"):
        settings = params(mix=mix, image_size=4, batch_size=100, rotate_degrees=10.0)
        model = build_model("resnet18", 3, False, 0.0)
        loop = Loop(model, side, side, settings, Job(MULTICLASS, CPU, ONE, None, "", print))
        seen[mix] = next(iter(loop.loader(1)))
    none_images, none_targets, none_boxes, none_labels = seen["none"]
    cut_images, cut_targets, cut_boxes, cut_labels = seen["defect_cutmix"]
    assert all(b.shape == (0, 4) for b in none_boxes) and all(not len(b) for b in none_labels)
    assert sum(len(b) for b in cut_boxes) == 10 and sum(len(b) for b in cut_labels) == 10
    assert torch.equal(none_images, cut_images) and torch.equal(none_targets, cut_targets)


def test_augment_on_auto_is_the_device_on_a_gpu_and_the_loader_on_a_cpu() -> None:
    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    assert augment_place("auto", CPU) == "loader"
    assert augment_place("auto", cuda) == "device"
    assert augment_place("device", CPU) == "device"
    assert augment_place("loader", cuda) == "loader"


def test_augmenting_on_the_device_leaves_the_loader_plain_images() -> None:
    images, labels = imbalanced()
    side = Side(images, labels, [(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64))] * 100)
    seen = {}
    for place in ("loader", "device"):
        settings = params(image_size=4, batch_size=100, rotate_degrees=30.0, augment_on=place)
        model = build_model("resnet18", 3, False, 0.0)
        loop = Loop(model, side, side, settings, Job(MULTICLASS, CPU, ONE, None, "", print))
        batch = next(iter(loop.loader(1)))
        shown = torch.tensor([index for _, _, index in loop.draws])
        seen[place] = (loop.augment, torch.equal(batch[0], images[shown]))
    assert seen["loader"] == (None, False)  # rotated per image: corners filled black
    assert isinstance(seen["device"][0], BatchAugment) and seen["device"][1]


def test_per_batch_draws_are_new_per_epoch_rank_and_stream() -> None:
    def draws(seed: int, epoch: int, rank: int, stream: int = AUGMENT_STREAM) -> torch.Tensor:
        return torch.rand(8, generator=rank_generator(stream, seed, epoch, rank))

    assert torch.equal(draws(7, 3, 0), draws(7, 3, 0))
    others = [draws(7, 4, 0), draws(7, 3, 1), draws(8, 3, 0), draws(7, 3, 0, PASTE_STREAM)]
    assert all(not torch.equal(draws(7, 3, 0), other) for other in others)


def test_auto_loader_workers_none_on_cpu_and_a_core_each_on_a_gpu() -> None:
    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    assert loader_workers("auto", CPU, 16, 1) == 0  # the step's threads use every core
    assert loader_workers("auto", cuda, 16, 1) == 8  # at most 8
    assert loader_workers("auto", cuda, 6, 1) == 5  # one core left to the main process
    assert loader_workers("auto", cuda, 16, 4) == 3  # 4 ranks share the machine's cores
    assert loader_workers("auto", cuda, 1, 1) == 0
    assert loader_workers(3, CPU, 2, 1) == 3  # a number is taken as it is
    section = params().model_dump()
    for setting in ("auto", 0, 8):
        assert (
            TrainParams.model_validate({**section, "num_workers": setting}).num_workers == setting
        )
    for wrong in ("many", -1):
        with pytest.raises(ValueError, match="num_workers"):
            TrainParams.model_validate({**section, "num_workers": wrong})
