"""`apexloop predict`: score image files with a checkpoint and apply its operating point.

Each input image gets one row: its path, one score per model output (`score_<name>`), and the
decision at the operating point the evaluate stage chose (models/thresholds.json): the class
(multiclass) or the defects joined by "+", or the good class (multilabel). A file that cannot
be decoded keeps its row, with the reason in `error` and no scores or decision; nothing is
dropped.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.checkpoints import load_model
from pipeline.errors import ApexLoopError
from pipeline.inference import predict_scores
from pipeline.io import ImageReadError, load_rgb
from pipeline.models import pick_device, place_model
from pipeline.operating import Thresholds
from pipeline.paths import atomic_output

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 100_000_000  # larger files are refused as decompression bombs


def collect(inputs: Sequence[Path]) -> list[Path]:
    """The files named, plus every image file under the folders named (sorted, recursive)."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            walked = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            found += [p for p in walked if p.is_file()]
        elif item.is_file():
            found.append(item)
        else:
            raise ApexLoopError(f"{item}: no such file or folder to predict on")
    if not found:
        raise ApexLoopError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {list(inputs)}")
    return found


def _decode(paths: list[Path], size: int) -> tuple[torch.Tensor, list[str]]:
    """uint8 (N, 3, size, size) with zeros where a file failed; the reasons ('' if none)."""
    stack = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    errors = [""] * len(paths)
    for index, path in enumerate(paths):
        try:
            stack[index] = load_rgb(path, size, MAX_PIXELS).transpose(2, 0, 1)  # (C, H, W)
        except ImageReadError as exc:
            errors[index] = str(exc)
            log.warning("%s: not scored: %s", path, exc)
    return torch.from_numpy(stack), errors


def _check(thresholds: Thresholds, classes: tuple[str, ...], task: str, where: Path) -> None:
    if tuple(thresholds.classes) != classes or thresholds.task != task:
        raise ApexLoopError(
            f"{where}: thresholds are for {thresholds.task} {thresholds.classes}, but the model "
            f"was trained for {task} {list(classes)}; use the thresholds evaluate wrote for it"
        )


def predict(
    model_path: Path, thresholds_path: Path, inputs: Sequence[Path], batch_size: int = 32
) -> pd.DataFrame:
    """One row per input image: path, score_<output> per model output, decision, error."""
    model, size, info = load_model(model_path)
    if not thresholds_path.is_file():
        raise ApexLoopError(
            f"{thresholds_path}: no thresholds file; run the evaluate stage (dvc repro) to "
            "choose the operating point, or pass --thresholds"
        )
    thresholds = Thresholds.load(thresholds_path)
    _check(thresholds, info.classes, info.task, thresholds_path)
    paths = collect(inputs)
    device = pick_device("auto")
    place_model(model, device)
    images, errors = _decode(paths, size)
    scores = predict_scores(model, images, (batch_size, device), info.task, thresholds.tta)
    decisions = thresholds.decide(scores)
    table: dict[str, Any] = {"path": [str(p) for p in paths]}
    for column, name in enumerate(thresholds.outputs):
        column_scores = zip(scores[:, column], errors, strict=True)
        table[f"score_{name}"] = [None if e else float(s) for s, e in column_scores]
    table["decision"] = [None if e else d for d, e in zip(decisions, errors, strict=True)]
    table["error"] = errors
    log.info("scored %d images (%d unreadable)", len(paths), sum(map(bool, errors)))
    return pd.DataFrame(table)


def write_table(frame: pd.DataFrame, out: Path) -> None:
    """CSV or parquet by the file suffix, written atomically."""
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ApexLoopError(f"{out}: write predictions to a .csv or .parquet file")
    with atomic_output(out) as tmp:
        if out.suffix.lower() == ".csv":
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False)
            tmp.write_text(buffer.getvalue())
        else:
            frame.to_parquet(tmp, index=False)
