"""Decoded image stacks, targets and boxes for training and evaluation.

Images are decoded once per stage run into one uint8 tensor (N, 3, S, S); epochs reuse it. The
decode lives in RAM (`decode_stack`) or, for sets larger than RAM, in a memory-mapped file keyed
by the rows' paths and hashes (`decode_images`), which later runs reuse. `AugmentedSet` serves
that stack with per-sample augmentation seeded from (seed, epoch, position); `EpochDraws`, the
DataLoader's sampler, says which image each position of an epoch shows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from pipeline.errors import ApexLoopError
from pipeline.io import load_rgb
from pipeline.manifest import TaskInfo
from pipeline.paths import atomic_output, resolve_many_inside
from pipeline.transforms import augment

logger = logging.getLogger(__name__)


def _decode_into(stack: np.ndarray, root: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Decode row i's image into stack[i] (stack: uint8 (N, 3, S, S), in RAM or a memmap)."""
    size = stack.shape[2]
    paths = resolve_many_inside(root, [row["path"] for row in rows])
    for index, (row, path) in enumerate(zip(rows, paths, strict=True)):
        pixels = load_rgb(path, size, row["width"] * row["height"])  # (H, W, C)
        stack[index] = pixels.transpose(2, 0, 1)  # (C, H, W)


def decode_stack(root: Path, rows: Sequence[dict[str, Any]], size: int) -> torch.Tensor:
    """uint8 (N, 3, size, size) of the rows' images, in row order."""
    stack = np.empty((len(rows), 3, size, size), dtype=np.uint8)
    _decode_into(stack, root, rows)
    return torch.from_numpy(stack)


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


def good_rows(targets: torch.Tensor, good_index: int | None) -> torch.Tensor:
    """bool (N,): which of `targets` (as `targets` gives them) are good images: the good
    class's index (multiclass, `good_index` its output), no label at all (multilabel, None)."""
    return targets == good_index if good_index is not None else targets.sum(dim=1) == 0


class DatasetError(ApexLoopError):
    """Rows, boxes or cache settings that cannot make a training set; the message says which."""


# Bump when the cached bytes would change for the same rows (layout, resizing, colour handling).
_CACHE_FORMAT = "apexloop-decode-v2 uint8 NCHW bilinear, 16-bit scaled"


def cache_key(rows: Sequence[dict[str, Any]], size: int) -> str:
    """sha256 hex over the cache format, `size` and each row's (path, sha256), in row order.

    Invariant: the same rows in the same order at the same size give the same key; another
    image, order, content (sha256) or size gives another key.
    """
    digest = hashlib.sha256(f"{_CACHE_FORMAT}\nsize={size}\n".encode())
    for row in rows:
        # JSON quoting keeps (path, sha256) pairs unambiguous whatever characters a path holds
        digest.update(json.dumps([row["path"], row["sha256"]]).encode() + b"\n")
    return digest.hexdigest()


def decode_images(
    root: Path,
    rows: Sequence[dict[str, Any]],
    size: int,
    mode: str,
    cache_dir: Path | None,
) -> torch.Tensor:
    """uint8 (N, 3, size, size) of the rows' images, in row order.

    mode "memory": decoded into RAM (`decode_stack`). mode "disk": a memory-mapped file
    `cache_dir / f"{cache_key(rows, size)}.u8"` (raw (N, 3, S, S) bytes); an existing file of the
    right byte size is reused without decoding anything, otherwise images are decoded one by one
    into a temp file that is renamed into place only when complete (a killed run never leaves a
    half file under the final name). RAM use of the disk mode does not grow with N. The returned
    tensor is a copy-on-write view of the file: writes to it never reach the file.
    """
    if mode == "memory":
        return decode_stack(root, rows, size)
    if mode != "disk":
        raise DatasetError(f"train.decode_cache is {mode!r}; use 'memory' or 'disk'")
    if cache_dir is None:
        raise DatasetError("train.decode_cache is 'disk' but no cache folder was given")
    shape = (len(rows), 3, size, size)
    if not rows:
        return torch.empty(shape, dtype=torch.uint8)  # an empty file cannot be memory-mapped
    path = cache_dir / f"{cache_key(rows, size)}.u8"
    if not _is_complete(path, shape):
        _decode_to_file(root, rows, size, path)
    # mode "c": copy-on-write, so the array is writable (no torch warning) yet the file is safe
    mapped = np.memmap(path, dtype=np.uint8, mode="c", shape=shape)
    return torch.from_numpy(mapped)


def _is_complete(path: Path, shape: tuple[int, int, int, int]) -> bool:
    """Whether `path` is a cache file with exactly the bytes of a uint8 array of `shape`."""
    if not path.is_file():
        return False
    expected = int(np.prod(shape))
    actual = path.stat().st_size
    if actual != expected:
        logger.warning("%s: %d bytes, expected %d; decoding again", path, actual, expected)
        return False
    return True


def _decode_to_file(root: Path, rows: Sequence[dict[str, Any]], size: int, path: Path) -> None:
    """Decode the rows' images one at a time into a memory-mapped temp file, then rename it
    onto `path` (atomic). On any error the temp file is removed and `path` is left as it was."""
    logger.info("decoding %d images at %dx%d into %s", len(rows), size, size, path)
    with atomic_output(path) as tmp:
        stack = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(len(rows), 3, size, size))
        _decode_into(stack, root, rows)
        stack.flush()
        del stack  # unmap before the rename


def scaled_boxes(
    rows: Sequence[dict[str, Any]], info: TaskInfo, size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row: (float32 (n, 4) XYXY boxes on the size x size canvas, int64 (n,) output index
    of each box's label), with output indices as in `output_names(info)`.

    Boxes are stored in original pixels; the decode resizes width x height to size x size
    without keeping the aspect, so x scales by size / width and y by size / height.
    """
    names = output_names(info)
    return [_row_boxes(row, names, size) for row in rows]


def _row_boxes(
    row: dict[str, Any], names: Sequence[str], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's boxes scaled to the size x size canvas and their output indices."""
    for box in row["boxes"]:
        if box["label"] not in names:
            raise DatasetError(
                f"{row['path']}: box label {box['label']!r} is not one of the model's "
                f"outputs {list(names)}; fix the box's label or the task's class list"
            )
    corners = [[box["x0"], box["y0"], box["x1"], box["y1"]] for box in row["boxes"]]
    sx, sy = size / row["width"], size / row["height"]
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float64)  # (4,)
    coords = torch.tensor(corners, dtype=torch.float64).reshape(-1, 4) * scale  # (n, 4)
    labels = [names.index(box["label"]) for box in row["boxes"]]
    return coords.to(torch.float32), torch.tensor(labels, dtype=torch.int64)  # (n, 4), (n,)


Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 64-bit seed for one (seed, epoch, position), well mixed (no arithmetic collisions)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint64)[0])


Draw = tuple[int, int, int]  # (epoch, position in the epoch's whole draw, image index)


class AugmentedSet(Dataset[Sample]):
    """The decoded images with their targets and boxes, augmented per draw.

    Sample of draw (epoch, position, index): (image uint8 (3, S, S), target, boxes float (n, 4),
    box labels int64 (n,)) of image `index`, augmented with a seed derived from (seed, epoch,
    position). Invariants: a sample depends only on its draw and the data, never on worker
    count or visit order, so two visits of one image in an epoch (weighted sampling) are
    augmented differently; samples never share memory with the set's tensors. The set holds
    no per-epoch state, so DataLoader workers can live across epochs (persistent_workers).
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        boxes: Sequence[tuple[torch.Tensor, torch.Tensor]],
        transform: v2.Transform | None,
        seed: int,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DatasetError(
                f"expected uint8 images (N, 3, S, S), got {images.dtype} {tuple(images.shape)}"
            )
        if not len(images) == len(targets) == len(boxes):
            raise DatasetError(
                f"{len(images)} images, {len(targets)} targets and {len(boxes)} "
                "box lists: expected one of each per image"
            )
        if seed < 0:
            raise DatasetError(f"train.seed is {seed}; use a value >= 0")
        self.images = images  # (N, 3, S, S), possibly a memory-mapped view; never written
        self.targets = targets  # (N,) class indices or (N, outputs) multi-hot
        self.boxes = list(boxes)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, draw: Draw) -> Sample:
        epoch, position, index = draw
        if not 0 <= index < len(self.images):
            raise IndexError(f"image {index} outside 0..{len(self.images) - 1}")
        image, target = self.images[index], self.targets[index].clone()
        boxes, labels = self.boxes[index]
        if self.transform is None:
            return image.clone(), target, boxes.clone(), labels.clone()
        image, boxes = augment(
            self.transform, image, boxes, _sample_seed(self.seed, epoch, position)
        )
        return image, target, boxes, labels.clone()


class EpochDraws(Sampler[Draw]):
    """The draws of one process in the current epoch, for a DataLoader over an AugmentedSet of
    `size` images. The DataLoader reads them anew each time it is iterated, in the main
    process: call `set_order` before iterating it for the next epoch. Until then the order is
    every image once (epoch 0)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.draws: list[Draw] = [(0, position, position) for position in range(size)]

    def set_order(self, epoch: int, order: torch.Tensor, rank: int = 0, ranks: int = 1) -> None:
        """Visit images `order` (int64 (M,), repeats allowed) in epoch `epoch`. Under DDP the
        order is rank `rank`'s shard of one draw dealt round-robin to `ranks` processes;
        positions count in the whole draw, so no two ranks repeat an augmentation."""
        if epoch < 0:
            raise DatasetError(f"epoch is {epoch}; epochs count from 0")
        if order.ndim != 1 or order.dtype != torch.int64:
            raise DatasetError(
                f"expected an int64 order (M,), got {order.dtype} {tuple(order.shape)}"
            )
        if len(order) and not 0 <= int(order.min()) <= int(order.max()) < self.size:
            raise DatasetError(f"order holds indices outside 0..{self.size - 1}")
        self.draws = [
            (epoch, position * ranks + rank, index) for position, index in enumerate(order.tolist())
        ]

    def __iter__(self) -> Iterator[Draw]:
        return iter(self.draws)

    def __len__(self) -> int:
        return len(self.draws)


def collate(batch: Sequence[Sample]) -> Batch:
    """Stack B samples: images uint8 (B, 3, S, S), targets (B,) or (B, outputs), and the lists
    of B boxes (n_i, 4) and B box labels (n_i,) (box counts differ between images)."""
    images = torch.stack([sample[0] for sample in batch])  # (B, 3, S, S)
    targets = torch.stack([sample[1] for sample in batch])  # (B,) or (B, outputs)
    return images, targets, [sample[2] for sample in batch], [sample[3] for sample in batch]
