"""Batch mixing: MixUp, CutMix and defect-aware CutMix on normalised float batches.

Every draw comes from the caller's torch.Generator (NumPy's Beta and rectangle draws use a
NumPy generator seeded from it), never from a global RNG, and the caller's tensors are never
written to: `mix_batch` always returns new tensors.

Conventions, shared by all modes:
- one draw per batch decides whether it is mixed (share `prob`); image i's partner is
  perm[i], where perm is a random cyclic permutation of the batch, so no image is its own
  partner (a batch of one is never mixed);
- lam is per sample, (B,): each image gets its own Beta(alpha, alpha) draw and, for CutMix, its
  own rectangle, so one batch holds a spread of mixing ratios instead of one shared ratio;
- lam[i] is the share of output image i that is image i's own: MixUp's pixel weight, or for
  CutMix exactly 1 - (rectangle pixels) / (H * W);
- CutMix rectangles are integer pixel boxes inside the image whose area share lies within
  height / (2 * H * W) of a ratio clipped into [min_ratio, max_ratio] (rounding the width to
  whole pixels moves the area by at most half a pixel per row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ApexLoopError
from pipeline.params import TrainParams

MIX_MODES = ("none", "mixup", "cutmix", "defect_cutmix")
TASKS = ("multiclass", "multilabel")
# A rectangle's height / width is drawn log-uniformly in [1/3, 3] (then fitted into the image).
_LOG_ASPECT = math.log(3.0)
# defect_cutmix: candidate rectangles drawn per size, and how many times the size is halved.
_DRAWS = 20
_SHRINKS = 3
# A region of unknown location: the whole image (clipped to it where used).
_WHOLE = np.array([[-np.inf, -np.inf, np.inf, np.inf]])


class MixError(ApexLoopError):
    """Bad mixing settings or a batch that cannot be mixed; the message names the key or row."""


@dataclass(frozen=True)
class MixConfig:
    """Batch-mixing settings (params.yaml train.mix*, train.cutmix_*, train.defect_*).

    Invariants (checked on construction): mode is one of MIX_MODES, 0 <= prob <= 1,
    alpha > 0, 0 <= min_ratio <= max_ratio <= 1 with max_ratio > 0, 0 <= max_cover <= 1,
    0 < min_visible <= 1.
    """

    mode: str  # "none" | "mixup" | "cutmix" | "defect_cutmix"
    prob: float  # share of batches mixed
    alpha: float  # lam ~ Beta(alpha, alpha)
    min_ratio: float  # CutMix patch's share of the image area, lower clip
    max_ratio: float  # ... upper clip
    max_cover: float  # defect_cutmix: most of any base defect box the patch may cover
    min_visible: float  # defect_cutmix: box share inside the patch for a pasted defect to count

    def __post_init__(self) -> None:
        if self.mode not in MIX_MODES:
            raise MixError(f"train.mix is {self.mode!r}; use one of {', '.join(MIX_MODES)}")
        ranges = (
            ("train.mix_prob", self.prob, 0.0, 1.0, True),
            ("train.mix_alpha", self.alpha, 0.0, math.inf, False),
            ("train.cutmix_min_ratio", self.min_ratio, 0.0, 1.0, True),
            ("train.cutmix_max_ratio", self.max_ratio, 0.0, 1.0, False),
            ("train.defect_max_cover", self.max_cover, 0.0, 1.0, True),
            ("train.defect_min_visible", self.min_visible, 0.0, 1.0, False),
        )
        for key, value, low, high, low_included in ranges:
            above_low = value >= low if low_included else value > low
            if not (above_low and value <= high):  # also rejects NaN
                bracket = "[" if low_included else "("
                raise MixError(f"{key} is {value}; use a value in {bracket}{low}, {high}]")
        if self.min_ratio > self.max_ratio:
            raise MixError(
                f"train.cutmix_min_ratio ({self.min_ratio}) is above train.cutmix_max_ratio "
                f"({self.max_ratio}); lower the first or raise the second"
            )

    @classmethod
    def from_params(cls, params: TrainParams) -> MixConfig:
        """The mixing settings of a validated train section."""
        return cls(
            mode=params.mix,
            prob=params.mix_prob,
            alpha=params.mix_alpha,
            min_ratio=params.cutmix_min_ratio,
            max_ratio=params.cutmix_max_ratio,
            max_cover=params.defect_max_cover,
            min_visible=params.defect_min_visible,
        )


@dataclass(frozen=True)
class MixedBatch:
    """A mixed batch; every tensor is new (never a view of the inputs)."""

    images: torch.Tensor  # float (B, C, H, W)
    targets: torch.Tensor  # float (B, K) soft targets
    lam: torch.Tensor  # float (B,) share of each output image that is its own (base) image


def soft_targets(targets: torch.Tensor, task: str, n_outputs: int) -> torch.Tensor:
    """Float32 (B, K) targets for mixing, K = n_outputs; a new tensor.

    multiclass: integer class indices (B,) in [0, K) -> one-hot rows (each sums to 1);
    multilabel: multi-hot (B, K) with values in [0, 1] -> a float32 copy.
    """
    if task == "multiclass":
        if targets.ndim != 1 or targets.is_floating_point() or targets.dtype == torch.bool:
            raise MixError(
                f"multiclass targets must be integer class indices of shape (B,), got "
                f"{targets.dtype} {tuple(targets.shape)}"
            )
        if not _indices_below(targets, n_outputs):
            raise MixError(f"multiclass targets must lie in 0..{n_outputs - 1}")
        return F.one_hot(targets.long(), n_outputs).to(torch.float32)  # (B, K)
    if task == "multilabel":
        if targets.ndim != 2 or targets.shape[1] != n_outputs:
            raise MixError(
                f"multilabel targets must have shape (B, {n_outputs}), got {tuple(targets.shape)}"
            )
        copy = targets.to(torch.float32, copy=True)  # (B, K)
        if copy.numel() and not (float(copy.min()) >= 0 and float(copy.max()) <= 1):
            raise MixError("multilabel targets must lie in [0, 1]")
        return copy
    raise MixError(f"task is {task!r}; use one of {', '.join(TASKS)}")


def mix_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    box_labels: Sequence[torch.Tensor],
    task: str,
    good_index: int | None,
    config: MixConfig,
    generator: torch.Generator,
) -> MixedBatch:
    """Mix a batch per `config`; see the module docstring for the shared conventions.

    images: float (B, C, H, W); targets: float (B, K) from `soft_targets`; boxes[i]: float
    (n_i, 4) XYXY pixel boxes of image i's defects, box_labels[i]: int64 (n_i,) their output
    indices; good_index: the good class's output index (multiclass), None (multilabel).
    - mixup: x = lam x + (1 - lam) x[perm], t = lam t + (1 - lam) t[perm].
    - cutmix: the partner's pixels of one rectangle are pasted at the same place, and
      t = lam t + (1 - lam) t[perm] for both tasks (multilabel too: area-weighted, as in the
      original CutMix, so a partner defect counts by the share of the image pasted).
    - defect_cutmix: image i's rectangle covers at most max_cover of each of its own defect
      regions (see `_defect_regions`); when none fits after shrinking, image i is left as it
      is (lam = 1). Labels follow the defects that show, not the pixel shares: multilabel
      t = max(t, labels the patch shows) (`_patch_row`); multiclass, by visible defect area
      (`_visible_row`), so a defect that shows is never part "good".
    - unmixed (mode none, a batch not drawn, B = 1): copies, lam = 1.
    """
    _check_batch(images, targets, boxes, box_labels, task, good_index)
    batch, size = images.shape[0], (images.shape[2], images.shape[3])
    if config.mode == "none" or batch < 2 or not _draws_mix(config.prob, generator):
        return _unmixed(images, targets)
    perm = _partners(batch, generator)  # (B,)
    rng = np.random.default_rng(_seed_from(generator))
    lam = rng.beta(config.alpha, config.alpha, size=batch)  # (B,) float64
    if config.mode == "mixup":
        return _mixup(images, targets, perm, lam)
    ratios = np.clip(1.0 - lam, config.min_ratio, config.max_ratio).tolist()  # patch area shares
    if config.mode == "cutmix":
        rects: list[np.ndarray | None] = [_draw_rects(rng, r, *size, 1)[0] for r in ratios]
        pasted, own = _paste(images, perm, rects)
        return MixedBatch(pasted, _blend(targets, targets[perm.to(targets.device)], own), own)
    rows = targets.detach().to("cpu", torch.float64)  # (B, K) one transfer, not B
    regions = [
        _defect_regions(*parts, good_index) for parts in zip(boxes, box_labels, rows, strict=True)
    ]
    rects = [
        _fit_rect(rng, r, reg[0], size, config) for r, reg in zip(ratios, regions, strict=True)
    ]
    pasted, own = _paste(images, perm, rects)
    if good_index is None:
        patches = [
            _patch_row(rects[i], regions[j], rows.shape[1], size, config.min_visible)
            for i, j in enumerate(perm.tolist())
        ]
        patch = torch.as_tensor(np.stack(patches), dtype=targets.dtype, device=targets.device)
        return MixedBatch(pasted, torch.maximum(targets, patch), own)
    labelled = [
        _visible_row(
            rects[i],
            regions[i][0],
            regions[j][0],
            rows[i],
            rows[j],
            size,
            good_index,
            config.min_visible,
        )
        for i, j in enumerate(perm.tolist())
    ]
    mixed = torch.as_tensor(np.stack(labelled), dtype=targets.dtype, device=targets.device)
    return MixedBatch(pasted, mixed, own)


def _check_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    box_labels: Sequence[torch.Tensor],
    task: str,
    good_index: int | None,
) -> None:
    """Raise MixError unless the batch's shapes, dtypes, task and good index fit together."""
    if images.ndim != 4 or not images.is_floating_point():
        raise MixError(f"images must be float (B, C, H, W), got {images.dtype} {images.shape}")
    batch = images.shape[0]
    if targets.ndim != 2 or targets.shape[0] != batch or not targets.is_floating_point():
        raise MixError(
            f"targets must be float (B, K) with B = {batch} (use soft_targets), got "
            f"{targets.dtype} {tuple(targets.shape)}"
        )
    if task not in TASKS:
        raise MixError(f"task is {task!r}; use one of {', '.join(TASKS)}")
    n_outputs = targets.shape[1]
    if task == "multiclass" and (good_index is None or not 0 <= good_index < n_outputs):
        raise MixError(f"multiclass mixing needs good_index in 0..{n_outputs - 1}")
    if task == "multilabel" and good_index is not None:
        raise MixError("multilabel mixing takes good_index None (a good image is all zeros)")
    if len(boxes) != batch or len(box_labels) != batch:
        raise MixError(f"need one boxes and one box_labels tensor per image ({batch})")
    for row, (coords, labels) in enumerate(zip(boxes, box_labels, strict=True)):
        if coords.ndim != 2 or coords.shape[1] != 4 or labels.shape != (coords.shape[0],):
            raise MixError(
                f"batch row {row}: boxes must be (n, 4) with labels (n,), got "
                f"{tuple(coords.shape)} and {tuple(labels.shape)}"
            )
        if not _indices_below(labels, n_outputs):
            raise MixError(f"batch row {row}: box labels must lie in 0..{n_outputs - 1}")


def _indices_below(indices: torch.Tensor, bound: int) -> bool:
    """Whether every entry of an integer tensor lies in 0..bound - 1 (true when empty)."""
    return indices.numel() == 0 or (int(indices.min()) >= 0 and int(indices.max()) < bound)


def _draws_mix(prob: float, generator: torch.Generator) -> bool:
    """One draw: whether this batch is mixed (True with probability prob)."""
    return bool(torch.rand((), generator=generator, device=generator.device) < prob)


def _seed_from(generator: torch.Generator) -> int:
    """A 63-bit seed for a NumPy generator, drawn from the torch generator."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device))


def _partners(batch: int, generator: torch.Generator) -> torch.Tensor:
    """int64 CPU (B,): perm[i] is image i's partner; one random cycle, so perm[i] != i (B >= 2)."""
    order = torch.randperm(batch, generator=generator, device=generator.device).cpu()  # (B,)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)  # partner of order[k] is order[k + 1]
    return perm


def _unmixed(images: torch.Tensor, targets: torch.Tensor) -> MixedBatch:
    """Copies of the batch with lam = 1."""
    lam = torch.ones(images.shape[0], dtype=images.dtype, device=images.device)  # (B,)
    return MixedBatch(images.clone(), targets.clone(), lam)


def _blend(own: torch.Tensor, other: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """lam own + (1 - lam) other, per row; own, other (B, ...), lam (B,)."""
    weight = lam.to(own.device, own.dtype).view(-1, *([1] * (own.ndim - 1)))  # (B, 1, ...)
    return weight * own + (1 - weight) * other


def _mixup(
    images: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor, lam: np.ndarray
) -> MixedBatch:
    """MixUp with per-sample lam (B,): pixels and targets both weighted by lam."""
    weight = torch.as_tensor(lam, dtype=images.dtype, device=images.device)  # (B,)
    partner_images = images[perm.to(images.device)]  # (B, C, H, W)
    partner_targets = targets[perm.to(targets.device)]  # (B, K)
    mixed_images = _blend(images, partner_images, weight)
    return MixedBatch(mixed_images, _blend(targets, partner_targets, weight), weight)


def _draw_rects(
    rng: np.random.Generator, ratio: float, height: int, width: int, count: int
) -> np.ndarray:
    """int64 (count, 4) rectangles (top, left, h, w) inside a height x width image.

    Invariants: 1 <= h <= height, 0 <= w <= width, top + h <= height, left + w <= width, and
    |h * w - ratio * height * width| <= h / 2 (h >= area / width, so rounding area / h to a
    whole width never needs clipping). w == 0 is an empty rectangle (ratio near 0).
    """
    area = ratio * height * width
    aspect = np.exp(rng.uniform(-_LOG_ASPECT, _LOG_ASPECT, size=count))  # (count,) h / w
    lowest = min(height, max(1, math.ceil(area / width)))
    tall = np.clip(np.rint(np.sqrt(area * aspect)), lowest, height).astype(np.int64)  # (count,)
    wide = np.clip(np.rint(area / tall), 0, width).astype(np.int64)  # (count,)
    top = rng.integers(0, height - tall + 1)  # (count,)
    left = rng.integers(0, width - wide + 1)  # (count,)
    return np.stack([top, left, tall, wide], axis=1)  # (count, 4)


def _paste(
    images: torch.Tensor, perm: torch.Tensor, rects: Sequence[np.ndarray | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste partner pixels into each image's rectangle (None: none); returns (images, lam)
    with lam[i] = 1 - rectangle pixels / (H * W) exactly."""
    batch, _, height, width = images.shape
    inside = torch.zeros((batch, 1, height, width), dtype=torch.bool)  # (B, 1, H, W)
    lam = np.ones(batch, dtype=np.float64)  # (B,)
    for row, rect in enumerate(rects):
        if rect is None:
            continue
        top, left, tall, wide = (int(v) for v in rect)
        inside[row, :, top : top + tall, left : left + wide] = True
        lam[row] = 1.0 - (tall * wide) / (height * width)
    partner = images[perm.to(images.device)]  # (B, C, H, W)
    pasted = torch.where(inside.to(images.device), partner, images)
    return pasted, torch.as_tensor(lam, dtype=images.dtype, device=images.device)


def _defect_regions(
    coords: torch.Tensor, labels: torch.Tensor, row: torch.Tensor, good_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """float64 (m, 4) XYXY regions of one image's defects, with int64 (m,) output indices.

    The image's boxes, plus one whole-image region (-inf..inf, clipped to the image where used)
    per defect label with no box at all, whose location is unknown. A label whose boxes were
    all pushed out of view (zero area after augmentation) has a known location, outside the
    image: it gets no whole-image region. Defect labels: multiclass, the row's argmax class
    unless it is good_index; multilabel, every positive entry. Good images have none.
    """
    values = row.numpy()  # (K,)
    if good_index is None:
        defects = set(np.flatnonzero(values > 0).tolist())
    else:
        top = int(np.argmax(values))
        defects = set() if top == good_index else {top}
    unboxed = sorted(defects - set(labels.tolist()))
    whole = np.tile(_WHOLE, (len(unboxed), 1))  # (u, 4)
    regions = np.concatenate([coords.detach().cpu().double().numpy().reshape(-1, 4), whole])
    return regions, np.concatenate([labels.cpu().numpy(), unboxed]).astype(np.int64)


def _clipped(
    regions: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x0, y0, x1, y1 (m,) of XYXY regions clipped to the image."""
    return (
        np.clip(regions[:, 0], 0, width),
        np.clip(regions[:, 1], 0, height),
        np.clip(regions[:, 2], 0, width),
        np.clip(regions[:, 3], 0, height),
    )


def _areas(regions: np.ndarray, height: int, width: int) -> np.ndarray:
    """float64 (m,) pixel areas of XYXY regions clipped to the image (0: out of view)."""
    return _clipped_areas(*_clipped(regions, height, width))


def _clipped_areas(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """float64 (m,) areas of regions already clipped to the image (0: out of view)."""
    return np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)


def _shares(rects: np.ndarray, regions: np.ndarray, height: int, width: int) -> np.ndarray:
    """float64 (R, m): share of each region's area (clipped to the image) inside each rect.

    A region with no area inside the image (a box pushed out of view) gets share 0: it can be
    neither covered nor shown.
    """
    x0, y0, x1, y1 = _clipped(regions, height, width)  # (m,) each
    area = _clipped_areas(x0, y0, x1, y1)  # (m,)
    top, left = rects[:, 0:1], rects[:, 1:2]  # (R, 1)
    bottom, right = top + rects[:, 2:3], left + rects[:, 3:4]
    across = np.clip(np.minimum(right, x1) - np.maximum(left, x0), 0, None)  # (R, m)
    down = np.clip(np.minimum(bottom, y1) - np.maximum(top, y0), 0, None)  # (R, m)
    overlap = across * down  # (R, m)
    return np.divide(overlap, area, out=np.zeros_like(overlap), where=area > 0)


def _fit_rect(
    rng: np.random.Generator,
    ratio: float,
    protected: np.ndarray,
    size: tuple[int, int],
    config: MixConfig,
) -> np.ndarray | None:
    """A rectangle (top, left, h, w) covering at most config.max_cover of every protected
    region, or None. Tries _DRAWS rectangles of area share `ratio`, then halves the share (never
    below config.min_ratio) up to _SHRINKS times."""
    height, width = size
    for step in range(_SHRINKS + 1):
        share = max(ratio * 0.5**step, config.min_ratio)
        rects = _draw_rects(rng, share, height, width, _DRAWS)  # (D, 4)
        fits = (_shares(rects, protected, height, width) <= config.max_cover).all(axis=1)
        if fits.any():
            return rects[int(np.argmax(fits))]
        if share == config.min_ratio:
            break
    return None


def _patch_row(
    rect: np.ndarray | None,
    partner: tuple[np.ndarray, np.ndarray],
    n_outputs: int,
    size: tuple[int, int],
    min_visible: float,
) -> np.ndarray:
    """float64 (K,) multilabel label of the pasted patch: a 1 per partner defect with a region
    showing at least min_visible of its area inside the patch."""
    labels = np.zeros(n_outputs, dtype=np.float64)  # (K,)
    regions, region_labels = partner
    if rect is not None and len(regions):
        labels[region_labels[_shares(rect[None, :], regions, *size)[0] >= min_visible]] = 1.0
    return labels


def _visible_row(
    rect: np.ndarray | None,
    own: np.ndarray,
    partner: np.ndarray,
    own_row: torch.Tensor,
    partner_row: torch.Tensor,
    size: tuple[int, int],
    good_index: int,
    min_visible: float,
) -> np.ndarray:
    """float64 (K,) multiclass target of a mixed image, weighted by the defect area that shows.

    A region counts when at least min_visible of it shows: the base image's own regions outside
    the patch (a defect whose boxes are all out of view counts as the whole image, as it did
    before mixing), the partner's regions inside it. Each class gets its counted area over the
    total; with nothing counted the image is good. So a defect pasted into a good image makes it
    wholly that defect, and a base defect left in view keeps its label unless a pasted defect
    shares the image with it. rect None (nothing pasted): own_row as it is.
    """
    if rect is None:  # not mixed
        return own_row.numpy().copy()
    height, width = size
    weights = np.zeros(own_row.shape[0], dtype=np.float64)  # (K,)
    for regions, row, inside in ((own, own_row, False), (partner, partner_row, True)):
        cls = int(torch.argmax(row))
        if cls == good_index or not len(regions):
            continue
        areas = _areas(regions, height, width)  # (m,)
        if not inside and not (areas > 0).any():
            regions, areas = _WHOLE, np.array([float(height * width)])
        share = _shares(rect[None, :], regions, height, width)[0]  # (m,) inside the patch
        shown = share if inside else 1.0 - share
        weights[cls] += float((areas * shown)[(areas > 0) & (shown >= min_visible)].sum())
    if weights.sum() == 0:
        weights[good_index] = 1.0
    return weights / weights.sum()
