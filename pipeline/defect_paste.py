"""Defect copy-paste: good training images get a defect cut from another image of their batch.

On small defect sets a class is a handful of physical parts, so a model sees each defect at a
few places only, and misses the same defect elsewhere (magnetic_tile: a blowhole in plain view
called good with P(good) 0.97-1.00 while photos of other tiles taught the class). Pasting a
real defect at a random place of a good part shows it in many more contexts, and unlike CutMix
pastes only the defect and a margin of its own surface, not a rectangle of another tile whose
edges look like defects themselves.

For each good image of a batch (multiclass: the good class; multilabel: no label), with
probability `share`: one defect box of another image of the batch (an image drawn uniformly
among those with a box of positive area, then one of its boxes) is cut with a margin of
max(MARGIN_MIN, MARGIN_SHARE x its longer side) around it (clipped to that image) and pasted at
a uniformly drawn place of the good image, inside the canvas:
- the pasted pixels are shifted per channel so the margin's mean is that of the pixels it
  lands on (the defect keeps its contrast against its own surface; a photo under other
  lighting takes the receiver's brightness), then blended in with a weight that is 1 on the
  defect's box and falls linearly to 0 across the margin, so no seam shows;
- the image takes the defect's label (multiclass: its class; multilabel: that label is set) and
  gets the pasted box, so the defect map and defect-aware CutMix see where it is.
Images that are not good, or not drawn, come out as they went in. Draws come from the caller's
generator, a fixed number per image; inputs are never written to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import box_area

from pipeline.datasets import good_rows

MARGIN_MIN = 3.0  # px of the source image kept around a defect box, at least
MARGIN_SHARE = 0.25  # ... or this share of the box's longer side
_DRAWS = 5  # per image: whether, which source image, which box, top, left


@dataclass(frozen=True)
class PastedBatch:
    """A batch after pasting; every tensor is new (never a view of the inputs)."""

    images: torch.Tensor  # (B, C, H, W), the input's dtype and device
    targets: torch.Tensor  # the input's form: class indices (B,) or multi-hot (B, K)
    boxes: list[torch.Tensor]  # float32 (n_i, 4) XYXY per image, the pasted box last
    box_labels: list[torch.Tensor]  # int64 (n_i,)


def paste_defects(
    images: torch.Tensor,
    targets: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    box_labels: Sequence[torch.Tensor],
    good_index: int | None,
    share: float,
    generator: torch.Generator,
) -> PastedBatch:
    """Paste defects into good images; see the module docstring.

    images: (B, C, H, W) uint8 or float pixels (0..255); targets: multiclass int class indices
    (B,) with `good_index` the good class, multilabel multi-hot (B, K) with good_index None;
    boxes[i]: (n_i, 4) XYXY on the H x W canvas, box_labels[i]: int64 (n_i,) output indices.
    """
    if images.ndim != 4 or len({len(images), len(targets), len(boxes), len(box_labels)}) != 1:
        raise ValueError(
            f"need images (B, C, H, W) with one target, boxes and box_labels entry each, got "
            f"{tuple(images.shape)}, {len(targets)}, {len(boxes)}, {len(box_labels)}"
        )
    count = images.shape[0]
    draws = torch.rand((count, _DRAWS), generator=generator, dtype=torch.float64).tolist()
    out_images, out_targets = images.clone(), targets.clone()
    out_boxes = [found.to(torch.float32, copy=True) for found in boxes]
    out_labels = [found.to(torch.int64, copy=True) for found in box_labels]
    sources = [
        [int(k) for k in torch.nonzero(box_area(found) > 0).flatten()] for found in out_boxes
    ]  # per image, its boxes of positive area
    # images with a defect box to give: never a good one, so never the image receiving
    givers = [j for j in range(count) if sources[j]]
    is_good = good_rows(targets, good_index)
    for i, (apply, which, pick, down, across) in enumerate(draws):
        if not is_good[i] or apply >= share or not givers:
            continue
        j = givers[int(which * len(givers))]
        k = sources[j][int(pick * len(sources[j]))]
        moved = _paste_one(images, out_images, (i, j), out_boxes[j][k], (down, across))
        out_boxes[i] = torch.cat([out_boxes[i], moved[None]])
        label = out_labels[j][k : k + 1]
        out_labels[i] = torch.cat([out_labels[i], label])
        if good_index is None:
            out_targets[i, int(label)] = 1
        else:
            out_targets[i] = label.to(targets.dtype)[0]
    return PastedBatch(out_images, out_targets, out_boxes, out_labels)


def _paste_one(
    images: torch.Tensor,
    out: torch.Tensor,
    pair: tuple[int, int],
    box: torch.Tensor,
    place: tuple[float, float],
) -> torch.Tensor:
    """Cut `box` (XYXY (4,)) of images[source] with its margin and blend it into out[target]
    at the place drawn by `place` (two uniform draws: top, left); returns the box where it
    landed, float32 (4,)."""
    target, source = pair
    height, width = images.shape[2], images.shape[3]
    edges = box.tolist()
    x0, y0, x1, y1 = _cut(edges, height, width)
    top = int(place[0] * (height - (y1 - y0) + 1))
    left = int(place[1] * (width - (x1 - x0) + 1))
    rows, columns = slice(top, top + y1 - y0), slice(left, left + x1 - x0)
    patch = images[source, :, y0:y1, x0:x1].float()  # (C, h, w)
    under = images[target, :, rows, columns].float()
    weight = _weight(edges, (x0, y0, x1, y1)).to(patch)  # (h, w)
    # the level of the defect's surroundings (the margin; the whole cut where it has none)
    ring = weight < 1 if bool((weight < 1).any()) else torch.ones_like(weight, dtype=torch.bool)
    level = (under[:, ring].mean(dim=1) - patch[:, ring].mean(dim=1))[:, None, None]  # (C, 1, 1)
    blended = (weight * (patch + level) + (1 - weight) * under).clamp(0, 255)
    if not images.is_floating_point():
        blended = blended.round()
    out[target, :, rows, columns] = blended.to(images.dtype)
    shift = torch.tensor([left - x0, top - y0, left - x0, top - y0], dtype=torch.float32)
    return box.float() + shift


def _cut(box: list[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Integer XYXY pixel bounds of a box (XYXY floats) with its margin, clipped to the canvas."""
    x0, y0, x1, y1 = box
    margin = max(MARGIN_MIN, MARGIN_SHARE * max(x1 - x0, y1 - y0))
    return (
        max(0, math.floor(x0 - margin)),
        max(0, math.floor(y0 - margin)),
        min(width, math.ceil(x1 + margin)),
        min(height, math.ceil(y1 + margin)),
    )


def _weight(box: list[float], cut: tuple[int, int, int, int]) -> torch.Tensor:
    """float64 (h, w) blending weight of a cut: 1 on every pixel whose centre lies in the box,
    falling linearly to 0 at the cut's edge across the margin (none where the margin was
    clipped away: the box reached the source's edge)."""
    x0, y0, x1, y1 = box
    left, top, right, bottom = cut
    return _ramp(top, bottom, y0, y1)[:, None] * _ramp(left, right, x0, x1)[None, :]


def _ramp(start: int, stop: int, low: float, high: float) -> torch.Tensor:
    """float64 (stop - start,): per pixel of [start, stop), 1 where its centre lies in
    [low, high], else its distance from the cut's edge over the margin on that side."""
    centres = torch.arange(start, stop, dtype=torch.float64) + 0.5
    before = (centres - start) / (low - start) if low > start else torch.ones_like(centres)
    after = (stop - centres) / (stop - high) if stop > high else torch.ones_like(centres)
    return torch.minimum(before, after).clamp(0, 1)
