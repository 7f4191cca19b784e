"""From a model and decoded images to scores, decisions and metrics (shared by train, evaluate)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.datasets import output_names
from pipeline.manifest import TaskInfo
from pipeline.metrics import multiclass_metrics, multilabel_metrics
from pipeline.models import MEAN, STD
from pipeline.params import Tta


def normalise(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pixels 0..255 (B, 3, H, W), uint8 or float (batch-augmented) -> float (B, 3, H, W)
    normalised with the ImageNet statistics.

    The result is channels_last, the layout `place_model` gives the model (faster on CPU and GPU).
    Copies to a GPU are queued (non_blocking), never waited for: a blocking copy would make the
    host wait until the GPU has finished all its queued work, at every batch.
    """
    mean = torch.tensor(MEAN).view(1, 3, 1, 1).to(device, non_blocking=True)
    std = torch.tensor(STD).view(1, 3, 1, 1).to(device, non_blocking=True)
    scaled = (images.to(device, non_blocking=True).float() / 255.0 - mean) / std
    return scaled.contiguous(memory_format=torch.channels_last)


# The views test-time augmentation averages, as the image dims each one flips ((B, C, H, W):
# 3 = left-right, 2 = up-down); () is the image as it is.
TTA_VIEWS: dict[Tta, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "hflip": ((), (3,)),
    "vflip": ((), (2,)),
    "flips": ((), (3,), (2,), (2, 3)),
}


@torch.no_grad()
def view_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    views: tuple[tuple[int, ...], ...],
) -> torch.Tensor:
    """Logits (V, N, outputs) on the CPU, one row per view, computed in eval mode batch by batch.

    A view names the image dims to flip ((B, C, H, W): 3 left-right, 2 up-down; () the image as
    it is). Each batch is normalised once and fed to the model in every view.
    """
    model.eval()
    chunks: list[list[torch.Tensor]] = [[] for _ in views]
    for start in range(0, len(images), batch_size):
        batch = normalise(images[start : start + batch_size], device)
        for chunk, flip in zip(chunks, views, strict=True):
            # flip keeps channels_last; () would still copy, so the plain view skips it
            chunk.append(model(batch.flip(flip) if flip else batch).float().cpu())
    if not len(images):
        return torch.empty((len(views), 0, 0))
    return torch.stack([torch.cat(chunk) for chunk in chunks])


def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Logits (N, outputs) of the images as they are (the single-view case of `view_logits`)."""
    return view_logits(model, images, batch_size, device, ((),))[0]


def predict_scores(
    model: nn.Module, images: torch.Tensor, setting: tuple[int, torch.device], task: str, tta: Tta
) -> np.ndarray:
    """Scores (N, outputs) of uint8 images (N, 3, S, S), setting = (batch size, device): the
    mean of `to_scores` over the flipped views `tta` names (one view, the image, for "none").

    Averaging probabilities, not logits, keeps each view's vote bounded, as ensembles do.
    """
    batch_size, device = setting
    logits = view_logits(model, images, batch_size, device, TTA_VIEWS[tta])
    return np.mean([to_scores(view, task) for view in logits], axis=0)


def to_scores(logits: torch.Tensor, task: str) -> np.ndarray:
    """Softmax probabilities (multiclass) or per-defect sigmoid probabilities (multilabel)."""
    probs = logits.softmax(dim=1) if task == "multiclass" else logits.sigmoid()
    return probs.numpy()


def score_metrics(
    scores: np.ndarray, targets: torch.Tensor, info: TaskInfo, threshold: float
) -> dict[str, Any]:
    """Metrics of argmax (multiclass) or `scores >= threshold` (multilabel) decisions."""
    names = output_names(info)
    if info.task == "multiclass":
        predicted = scores.argmax(axis=1)
        return multiclass_metrics(targets.numpy(), predicted, names, names.index(info.good_class))
    return multilabel_metrics(targets.numpy() > 0.5, scores >= threshold, names)
