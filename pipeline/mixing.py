"""Batch mixing: MixUp, CutMix and defect-aware CutMix on normalised float batches.

Every draw comes from the caller's torch.Generator (NumPy's Beta and rectangle draws use a
NumPy generator seeded from it), never from a global RNG, and the caller's tensors are never
written to: `mix_batch` always returns new tensors.

Images may live on a GPU; the targets are best kept on the host (the training loop does):
placement and labels are worked out there, and with the targets on the host nothing is read
back from the GPU, so the host never waits for it. The output targets are on the targets'
device, the images on the images'; lam is on the host.

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
    lam: torch.Tensor  # float (B,) on the host: share of each output image that is its own


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
      t = max(t, labels the patch shows) (`_patch_rows`); multiclass, by visible defect area
      (`_visible_rows`), so a defect that shows is never part "good".
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
    ratios = np.clip(1.0 - lam, config.min_ratio, config.max_ratio)  # (B,) patch area shares
    if config.mode == "cutmix":
        rects = _draw_rects(rng, ratios, *size, 1)[:, 0]  # (B, 4)
        pasted, own = _paste(images, perm, rects)
        return MixedBatch(pasted, _blend(targets, targets[_to(perm, targets)], own), own)
    rows = targets.detach().to("cpu", torch.float64)  # (B, K) on the host
    regions, region_labels, counts = _padded(
        [_defect_regions(*parts, good_index) for parts in zip(boxes, box_labels, rows, strict=True)]
    )
    rects = _fit_rects(rng, ratios, regions, size, config)  # (B, 4), empty where none fits
    pasted, own = _paste(images, perm, rects)
    partner = perm.numpy()
    if good_index is None:
        shown = _patch_rows(rects, regions[partner], region_labels[partner], rows.shape[1], size)
        patch = torch.as_tensor(shown >= config.min_visible, dtype=targets.dtype)
        return MixedBatch(pasted, torch.maximum(targets, _to(patch, targets)), own)
    mixed = _visible_rows(
        rects, regions, counts, rows.numpy(), partner, size, good_index, config.min_visible
    )
    return MixedBatch(pasted, _to(torch.as_tensor(mixed, dtype=targets.dtype), targets), own)


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
    lam = torch.ones(images.shape[0], dtype=images.dtype)  # (B,)
    return MixedBatch(images.clone(), targets.clone(), lam)


def _to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`values` on `like`'s device (floating point: in its dtype), the copy to a GPU queued,
    not waited for (a blocking copy waits until the GPU has finished all its queued work)."""
    dtype = like.dtype if values.is_floating_point() else values.dtype
    return values.to(like.device, dtype, non_blocking=True)


def _blend(own: torch.Tensor, other: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """lam own + (1 - lam) other, per row; own, other (B, ...), lam (B,)."""
    weight = _to(lam, own).view(-1, *([1] * (own.ndim - 1)))  # (B, 1, ...)
    return weight * own + (1 - weight) * other


def _mixup(
    images: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor, lam: np.ndarray
) -> MixedBatch:
    """MixUp with per-sample lam (B,): pixels and targets both weighted by lam."""
    weight = torch.as_tensor(lam, dtype=images.dtype)  # (B,)
    partner_images = images[_to(perm, images)]  # (B, C, H, W)
    partner_targets = targets[_to(perm, targets)]  # (B, K)
    mixed_images = _blend(images, partner_images, weight)
    return MixedBatch(mixed_images, _blend(targets, partner_targets, weight), weight)


def _draw_rects(
    rng: np.random.Generator, ratios: np.ndarray, height: int, width: int, count: int
) -> np.ndarray:
    """int64 (n, count, 4) rectangles (top, left, h, w) inside a height x width image, `count`
    for each of the n area shares `ratios` (n,).

    Invariants: 1 <= h <= height, 0 <= w <= width, top + h <= height, left + w <= width, and
    |h * w - ratio * height * width| <= h / 2 (h >= area / width, so rounding area / h to a
    whole width never needs clipping). w == 0 is an empty rectangle (ratio near 0).
    """
    area = np.asarray(ratios, dtype=np.float64)[:, None] * height * width  # (n, 1)
    aspect = np.exp(rng.uniform(-_LOG_ASPECT, _LOG_ASPECT, size=(len(area), count)))  # h / w
    lowest = np.minimum(height, np.maximum(1, np.ceil(area / width)))  # (n, 1)
    tall = np.clip(np.rint(np.sqrt(area * aspect)), lowest, height).astype(np.int64)  # (n, count)
    wide = np.clip(np.rint(area / tall), 0, width).astype(np.int64)  # (n, count)
    top = rng.integers(0, height - tall + 1)  # (n, count)
    left = rng.integers(0, width - wide + 1)  # (n, count)
    return np.stack([top, left, tall, wide], axis=-1)  # (n, count, 4)


def _paste(
    images: torch.Tensor, perm: torch.Tensor, rects: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste partner pixels into each image's rectangle (int64 (B, 4) top, left, h, w; an
    empty one pastes nothing); returns (images, lam) with lam[i] = 1 - rectangle pixels /
    (H * W) exactly."""
    _, _, height, width = images.shape
    top, left, tall, wide = (torch.as_tensor(column)[:, None] for column in rects.T)  # (B, 1)
    down, across = torch.arange(height)[None, :], torch.arange(width)[None, :]  # (1, H), (1, W)
    # the rows and columns go to the images' device, the (B, 1, H, W) mask is made there: on a
    # GPU machine it is one kernel, not a host op competing with the loader's workers
    in_rows = _to((down >= top) & (down < top + tall), images)  # (B, H)
    in_columns = _to((across >= left) & (across < left + wide), images)  # (B, W)
    inside = in_rows[:, None, :, None] & in_columns[:, None, None, :]  # (B, 1, H, W)
    lam = 1.0 - (rects[:, 2] * rects[:, 3]) / (height * width)  # (B,) float64
    partner = images[_to(perm, images)]  # (B, C, H, W)
    pasted = torch.where(inside, partner, images)
    return pasted, torch.as_tensor(lam, dtype=images.dtype)


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


def _padded(
    regions: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image's (m_i, 4) regions and (m_i,) labels, padded to M = max m_i: float64
    (B, M, 4) regions, int64 (B, M) labels, and int64 (B,) counts m_i. A padding region has
    no area (all zeros): it is never covered, shown or counted."""
    counts = np.array([len(coords) for coords, _ in regions], dtype=np.int64)  # (B,)
    most = int(counts.max(initial=0))
    coords = np.zeros((len(regions), most, 4))  # (B, M, 4)
    labels = np.zeros((len(regions), most), dtype=np.int64)  # (B, M)
    for row, (found, found_labels) in enumerate(regions):
        coords[row, : len(found)] = found
        labels[row, : len(found)] = found_labels
    return coords, labels, counts


def _clipped(
    regions: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x0, y0, x1, y1 (...) of XYXY regions (..., 4) clipped to the image."""
    return (
        np.clip(regions[..., 0], 0, width),
        np.clip(regions[..., 1], 0, height),
        np.clip(regions[..., 2], 0, width),
        np.clip(regions[..., 3], 0, height),
    )


def _areas(regions: np.ndarray, height: int, width: int) -> np.ndarray:
    """float64 (...) pixel areas of XYXY regions (..., 4) clipped to the image (0: out of
    view)."""
    return _clipped_areas(*_clipped(regions, height, width))


def _clipped_areas(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """float64 areas of regions already clipped to the image (0: out of view)."""
    return np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)


def _shares(rects: np.ndarray, regions: np.ndarray, height: int, width: int) -> np.ndarray:
    """float64 (..., R, m): share of each region's area (clipped to the image) inside each
    rect, for rects (..., R, 4) (top, left, h, w) and XYXY regions (..., m, 4).

    A region with no area inside the image (a box pushed out of view, padding) gets share 0:
    it can be neither covered nor shown.
    """
    x0, y0, x1, y1 = (edge[..., None, :] for edge in _clipped(regions, height, width))
    area = _clipped_areas(x0, y0, x1, y1)  # (..., 1, m)
    top, left = rects[..., 0:1], rects[..., 1:2]  # (..., R, 1)
    bottom, right = top + rects[..., 2:3], left + rects[..., 3:4]
    across = np.clip(np.minimum(right, x1) - np.maximum(left, x0), 0, None)  # (..., R, m)
    down = np.clip(np.minimum(bottom, y1) - np.maximum(top, y0), 0, None)  # (..., R, m)
    overlap = across * down  # (..., R, m)
    return np.divide(overlap, area, out=np.zeros_like(overlap), where=area > 0)


def _fit_rects(
    rng: np.random.Generator,
    ratios: np.ndarray,
    protected: np.ndarray,
    size: tuple[int, int],
    config: MixConfig,
) -> np.ndarray:
    """int64 (B, 4): per image a rectangle (top, left, h, w) covering at most
    config.max_cover of every one of its protected regions (B, M, 4), or an empty one (all
    zeros) where none fits. Every image still looking tries _DRAWS rectangles of its area share
    `ratios[i]`, then of half that (never below config.min_ratio), up to _SHRINKS times; the
    first that fits is taken."""
    height, width = size
    rects = np.zeros((len(ratios), 4), dtype=np.int64)  # (B, 4)
    looking = np.arange(len(ratios))  # images without a rectangle yet
    for step in range(_SHRINKS + 1):
        share = np.maximum(ratios[looking] * 0.5**step, config.min_ratio)  # (n,)
        drawn = _draw_rects(rng, share, height, width, _DRAWS)  # (n, D, 4)
        covered = _shares(drawn, protected[looking], height, width)  # (n, D, M)
        fits = np.less_equal(covered, config.max_cover).all(axis=2)  # (n, D)
        found = fits.any(axis=1)  # (n,)
        rects[looking[found]] = drawn[found, np.argmax(fits[found], axis=1)]
        looking = looking[~found & (share > config.min_ratio)]
        if not len(looking):
            break
    return rects


def _patch_rows(
    rects: np.ndarray,
    regions: np.ndarray,
    labels: np.ndarray,
    n_outputs: int,
    size: tuple[int, int],
) -> np.ndarray:
    """float64 (B, K): per image, for each output the largest share of a partner region with
    that label inside the image's rectangle (B, 4); regions (B, M, 4) and labels (B, M) are
    each image's partner's. A label counts when its share reaches min_visible."""
    inside = _shares(rects[:, None], regions, *size)[:, 0]  # (B, M)
    shown = np.zeros((len(rects), n_outputs))  # (B, K)
    np.maximum.at(shown, (np.arange(len(rects))[:, None], labels), inside)
    return shown


def _visible_rows(
    rects: np.ndarray,
    regions: np.ndarray,
    counts: np.ndarray,
    rows: np.ndarray,
    partner: np.ndarray,
    size: tuple[int, int],
    good_index: int,
    min_visible: float,
) -> np.ndarray:
    """float64 (B, K) multiclass targets of a mixed batch, weighted by the defect area that shows.

    A region counts when at least min_visible of it shows: the base image's own regions outside
    its rectangle (a defect whose boxes are all out of view counts as the whole image, as it did
    before mixing), the partner's regions inside it. Each image's class (argmax of its row)
    gets its counted area, the partner's class the partner's; over the total; with nothing
    counted the image is good. So a defect pasted into a good image makes it wholly that
    defect, and a base defect left in view keeps its label unless a pasted defect shares the
    image with it. An empty rectangle (nothing pasted): the row as it is.
    """
    height, width = size
    batch = np.arange(len(rects))
    areas = _areas(regions, height, width)  # (B, M), padding 0
    inside = _shares(rects[:, None], regions, height, width)[:, 0]  # own regions (B, M)
    inside_partner = _shares(rects[:, None], regions[partner], height, width)[:, 0]
    own = np.where(1.0 - inside >= min_visible, areas * (1.0 - inside), 0.0).sum(axis=1)
    # a defect with regions, all out of view: the whole image, less the rectangle
    unseen = (counts > 0) & ~(areas > 0).any(axis=1)  # (B,)
    rest = 1.0 - rects[:, 2] * rects[:, 3] / (height * width)  # (B,) share outside
    own = np.where(unseen & (rest >= min_visible), rest * height * width, own)
    shown = (inside_partner >= min_visible) & (areas[partner] > 0)
    pasted = np.where(shown, areas[partner] * inside_partner, 0.0).sum(axis=1)  # (B,)
    classes = rows.argmax(axis=1)  # (B,)
    weights = np.zeros_like(rows)  # (B, K)
    weights[batch, classes] += np.where(classes == good_index, 0.0, own)
    weights[batch, classes[partner]] += np.where(classes[partner] == good_index, 0.0, pasted)
    weights[weights.sum(axis=1) == 0, good_index] = 1.0
    mixed = weights / weights.sum(axis=1, keepdims=True)
    empty = rects[:, 2] * rects[:, 3] == 0
    return np.where(empty[:, None], rows, mixed)
