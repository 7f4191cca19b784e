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


def normalise(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) normalised with the ImageNet statistics.

    The result is channels_last, the layout `place_model` gives the model (faster on CPU and GPU).
    Copies to a GPU are queued (non_blocking), never waited for: a blocking copy would make the
    host wait until the GPU has finished all its queued work, at every batch.
    """
    mean = torch.tensor(MEAN).view(1, 3, 1, 1).to(device, non_blocking=True)
    std = torch.tensor(STD).view(1, 3, 1, 1).to(device, non_blocking=True)
    scaled = (images.to(device, non_blocking=True).float() / 255.0 - mean) / std
    return scaled.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Logits (N, outputs) on the CPU, computed in eval mode batch by batch."""
    model.eval()
    chunks = [
        model(normalise(images[start : start + batch_size], device)).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty((0, 0))


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
