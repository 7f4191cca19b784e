"""Defect boxes from pixel masks: connected components of the thresholded mask."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from pipeline.io import ImageReadError, open_image
from pipeline.paths import resolve_inside

Box = tuple[float, float, float, float, str]


def boxes_from_mask(mask: np.ndarray, threshold: int, min_area: int, label: str) -> list[Box]:
    """Bounding boxes [x0, y0, x1, y1) of 8-connected components of `mask > threshold`.

    Components smaller than `min_area` pixels are ignored (speckle). Boxes are in pixel
    coordinates with exclusive upper corners, sorted top-left first.
    """
    binary = (mask > threshold).astype(np.uint8)  # (H, W)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    boxes = []
    for index in range(1, count):  # component 0 is the background
        x, y, w, h, area = (int(v) for v in stats[index])
        if area >= min_area:
            boxes.append((float(x), float(y), float(x + w), float(y + h), label))
    return sorted(boxes)


def mask_path_for(masks_dir: Path, rel_image_path: str) -> Path:
    """The mask mirroring an image: same relative path under the mask folder, .png suffix,
    resolved inside that folder (a PathError if a link leads out of it)."""
    return resolve_inside(masks_dir, str(PurePosixPath(rel_image_path).with_suffix(".png")))


def read_mask(path: Path, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Decode a mask as 8-bit grey and check it matches the image size (width, height)."""
    mask = open_image(path, max_pixels).convert("L")
    if mask.size != size:
        raise ImageReadError(
            f"{path}: mask is {mask.size[0]}x{mask.size[1]}, image is {size[0]}x{size[1]}; "
            "save the mask at the image's size"
        )
    return np.asarray(mask)
