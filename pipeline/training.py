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

from pipeline.errors import ApexLoopError
from pipeline.inference import normalise, predict_logits, score_metrics, to_scores
from pipeline.manifest import TaskInfo
from pipeline.params import TrainParams

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


def loss_function(task: str) -> nn.Module:
    """Cross-entropy over classes (multiclass) or per-defect binary cross-entropy (multilabel)."""
    return nn.CrossEntropyLoss() if task == "multiclass" else nn.BCEWithLogitsLoss()


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A new batch with each image mirrored left-right with probability 1/2 (B, C, H, W)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def _train_epoch(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    params: TrainParams,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    images, targets = data
    model.train()
    order = torch.randperm(len(images), generator=generator)
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


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    params: TrainParams,
    info: TaskInfo,
    device: torch.device,
) -> tuple[dict[str, Any], list[EpochLog]]:
    """Train for params.epochs; return the state dict of the best validation macro-F1 epoch."""
    generator = torch.Generator().manual_seed(params.seed)
    criterion = loss_function(info.task)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    history = []
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        train_loss = _train_epoch(model, train, params, optimizer, criterion, generator, device)
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
        if f1 > best[0]:
            best = (f1, copy.deepcopy(model.state_dict()))
    return best[1], history
