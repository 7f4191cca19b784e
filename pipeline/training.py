"""The training loop: batches over a decoded uint8 stack, validation each epoch, best state kept."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.datasets import output_names
from pipeline.errors import ApexLoopError
from pipeline.inference import normalise, predict_logits, score_metrics, to_scores
from pipeline.losses import build_loss, class_weights
from pipeline.manifest import TaskInfo
from pipeline.params import TrainParams
from pipeline.samplers import (
    ShuffleEpochSampler,
    WeightedEpochSampler,
    sample_weights,
    upsample_indices,
)

log = logging.getLogger(__name__)


class DivergedError(ApexLoopError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochLog:
    """One epoch's curves (no timings: the history file must be reproducible)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_macro_f1: float
    val_miss_rate: float | None


def sample_classes(targets: torch.Tensor, task: str) -> list[list[int]]:
    """Class indices of each sample: its class (multiclass, targets (N,)); its defects, or
    index L for the good class when it has none (multilabel, targets (N, L))."""
    if task == "multiclass":
        return [[int(label)] for label in targets.tolist()]
    good = targets.shape[1]
    return [[i for i, v in enumerate(row) if v > 0.5] or [good] for row in targets.tolist()]


def build_criterion(
    params: TrainParams, info: TaskInfo, targets: torch.Tensor, device: torch.device
) -> nn.Module:
    """The loss of params.loss, with class weights from the training targets' counts when
    params.class_weight_damping > 0 (multilabel: positives per defect)."""
    names = output_names(info)
    weights = None
    if params.class_weight_damping > 0:
        counts = (
            torch.bincount(targets, minlength=len(names))
            if info.task == "multiclass"
            else targets.sum(dim=0).round().long()
        )
        weights = class_weights(counts.tolist(), names, params.class_weight_damping)
    criterion = build_loss(
        info.task,
        params.loss,
        names,
        gamma=params.focal_gamma,
        alpha=params.focal_alpha,
        label_smoothing=params.label_smoothing,
        weights=weights,
    )
    return criterion.to(device)


def balance(
    train: tuple[torch.Tensor, torch.Tensor], params: TrainParams, info: TaskInfo
) -> tuple[tuple[torch.Tensor, torch.Tensor], WeightedEpochSampler | ShuffleEpochSampler]:
    """The training set after hard upsampling (params.upsample_target_ratio > 0) and the
    epoch sampler: shuffled, or weighted towards rare classes (params.sampler)."""
    classes = sample_classes(train[1], info.task)
    n_classes = len(output_names(info)) + (info.task == "multilabel")  # + good (multilabel)
    if params.upsample_target_ratio > 0:
        keep = upsample_indices(
            classes, n_classes, params.upsample_target_ratio, params.upsample_max_replications
        )
        index = torch.from_numpy(keep)
        train = (train[0][index], train[1][index])
        classes = [classes[i] for i in keep.tolist()]
    if params.sampler == "weighted":
        weights = sample_weights(classes, n_classes, params.sampler_mode, params.sampler_beta)
        return train, WeightedEpochSampler(weights, len(classes), params.seed)
    return train, ShuffleEpochSampler(len(classes), params.seed)


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A new batch with each image mirrored left-right with probability 1/2 (B, C, H, W)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def _train_epoch(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    order: torch.Tensor,
    params: TrainParams,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """One pass over `data` in `order` (indices, repeats allowed); returns the mean loss."""
    images, targets = data
    model.train()
    total, seen = 0.0, 0
    for start in range(0, len(order), params.batch_size):
        index = order[start : start + params.batch_size]
        batch = images[index]
        if params.hflip:
            batch = random_hflip(batch, generator)
        loss = criterion(model(normalise(batch, device)), targets[index].to(device))
        if not math.isfinite(loss.item()):
            raise DivergedError(
                f"training loss became {loss.item()} at batch {start // params.batch_size}; "
                f"lower train.lr (now {params.lr})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, seen = total + loss.item() * len(index), seen + len(index)
    return total / max(seen, 1)


def monitored(entry: EpochLog, monitor: str) -> tuple[float, float]:
    """Sort key of an epoch, larger is better: validation macro-F1, or the miss rate (lower is
    better) with macro-F1 breaking ties (several epochs often miss nothing)."""
    if monitor == "macro_f1":
        return (entry.val_macro_f1, 0.0)
    if entry.val_miss_rate is None:
        raise ApexLoopError(
            "train.monitor is miss_rate but the val side has no defective images to miss; "
            "use train.monitor: macro_f1 or a split with defects on val"
        )
    return (-entry.val_miss_rate, entry.val_macro_f1)


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    params: TrainParams,
    info: TaskInfo,
    device: torch.device,
) -> tuple[dict[str, Any], list[EpochLog], EpochLog]:
    """Train for up to params.epochs, stopping once params.patience epochs (0: never) bring no
    improvement of params.monitor; return the best epoch's state dict, the history and that
    epoch's log."""
    generator = torch.Generator().manual_seed(params.seed)  # augmentation draws
    train, sampler = balance(train, params, info)
    criterion = build_criterion(params, info, train[1], device)
    trainable = [p for p in model.parameters() if p.requires_grad]  # frozen ones stay out
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    best: tuple[EpochLog, dict[str, Any]] | None = None
    history = []
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64)
        train_loss = _train_epoch(
            model, train, order, params, optimizer, criterion, generator, device
        )
        scheduler.step()
        logits = predict_logits(model, val[0], params.batch_size, device)
        val_loss = criterion(logits, val[1]).item() if len(logits) else float("nan")
        metrics = score_metrics(to_scores(logits, info.task), val[1], info, 0.5)
        f1 = metrics["macro_f1"] or 0.0
        entry = EpochLog(
            epoch,
            round(train_loss, 5),
            round(val_loss, 5),
            f1,
            metrics["miss_rate"],
        )
        history.append(entry)
        log.info(
            "epoch %d/%d train_loss %.4f val_loss %.4f val_macro_f1 %.4f miss %s (%.1fs)",
            epoch,
            params.epochs,
            train_loss,
            val_loss,
            f1,
            entry.val_miss_rate,
            time.perf_counter() - started,
        )
        if best is None or monitored(entry, params.monitor) > monitored(best[0], params.monitor):
            best = (entry, copy.deepcopy(model.state_dict()))
        elif params.patience and epoch - best[0].epoch >= params.patience:
            log.info("early stop: no better %s for %d epochs", params.monitor, params.patience)
            break
    assert best is not None  # params.epochs >= 1
    return best[1], history, best[0]
