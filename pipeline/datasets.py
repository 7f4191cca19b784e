"""Decoded image stacks and targets for training and evaluation.

Images are decoded once per stage run into one uint8 tensor (N, 3, S, S); epochs reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io import load_rgb
from pipeline.manifest import TaskInfo
from pipeline.paths import resolve_inside


def decode_stack(root: Path, rows: Sequence[dict[str, Any]], size: int) -> torch.Tensor:
    """uint8 (N, 3, size, size) of the rows' images, in row order."""
    stack = np.empty((len(rows), size, size, 3), dtype=np.uint8)  # (N, H, W, C)
    for index, row in enumerate(rows):
        path = resolve_inside(root, row["path"])
        stack[index] = load_rgb(path, size, row["width"] * row["height"])
    return torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def output_names(info: TaskInfo) -> tuple[str, ...]:
    """What each model output means: every class (multiclass) or every defect (multilabel)."""
    return info.classes if info.task == "multiclass" else info.defect_classes


def targets(rows: Sequence[dict[str, Any]], info: TaskInfo) -> torch.Tensor:
    """Multiclass: int64 class indices (N,). Multilabel: float multi-hot (N, defects)."""
    names = output_names(info)
    if info.task == "multiclass":
        return torch.tensor([names.index(row["label"]) for row in rows], dtype=torch.int64)
    hot = torch.zeros((len(rows), len(names)), dtype=torch.float32)
    for index, row in enumerate(rows):
        for label in row["labels"]:
            hot[index, names.index(label)] = 1.0
    return hot
