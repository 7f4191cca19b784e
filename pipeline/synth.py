"""Synthetic visual-inspection data set with planted data-quality faults.

`generate` writes a small, deterministic set of 128x128 RGB "machined part surface" images.
Each physical part is shot 1-3 times (shared group key); defect parts carry drawn defects
(scratch, hole, crack, stain) with pixel masks. Known faults are planted (exact and near
duplicates, blurred shots, flipped labels, corrupt files) and listed in ``truth.csv`` so the
cleaning stage can be scored against them.

Boxes in ``labels.csv`` always describe the defects actually drawn; a flipped-label fault
changes only the label column.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pipeline.errors import ApexLoopError

logger = logging.getLogger(__name__)

CLASSES = ("good", "scratch", "hole", "crack", "stain")
GOOD_CLASS = "good"
DEFECT_CLASSES = CLASSES[1:]
CLASS_WEIGHTS = (0.70, 0.12, 0.09, 0.06, 0.03)  # multiclass share of parts, per CLASSES
NO_FAULT = "none"
FAULTS = ("exact_duplicate", "near_duplicate", "blurred", "flipped_label", "corrupt")
IMAGE_SIZE = 128
MULTILABEL_FOLDER = "all"

_MAX_SHIFT = 3  # shots of one part are crops offset by 0..2*_MAX_SHIFT px
_CANVAS = IMAGE_SIZE + 2 * _MAX_SHIFT
_SAFE = (2 * _MAX_SHIFT + 4, IMAGE_SIZE - 4)  # canvas span inside every crop, 4 px from edges
_SHOTS_P = (0.3, 0.4, 0.3)  # P(1, 2, 3 shots per part)
_DEFECT_COUNT_P = (0.45, 0.35, 0.13, 0.07)  # multilabel: P(0, 1, 2, 3 defects per part)
_FAULT_FRACTIONS = {
    "exact_duplicate": 0.03,
    "near_duplicate": 0.03,
    "blurred": 0.03,
    "flipped_label": 0.10,
}
_N_CORRUPT = 4
_MIN_COUNT_FOR_ALL_FAULTS = 50
_PNG_LEVEL = 6
_RESAVE_PNG_LEVEL = 1
_NEAR_VARIANTS = ("jpeg", "rescale", "shift")

Canvas = NDArray[np.float32]  # (H, W, 3) grey levels, unclipped
Mask = NDArray[np.bool_]  # (H, W)
Pixels = NDArray[np.uint8]  # (H, W, 3)


@dataclass(frozen=True)
class _Item:
    """One image file to write; `defects` holds a mask per drawn defect, in drawing order."""

    name: str
    group: str
    pixels: Pixels
    defects: tuple[tuple[str, Mask], ...]
    true_labels: tuple[str, ...]
    recorded_labels: tuple[str, ...]
    fault: str = NO_FAULT
    source: str = ""  # name of the source item (duplicates only)
    payload: bytes | None = None  # exact file bytes; None: PNG of `pixels`
    suffix: str = ".png"


def generate(out: Path, *, count: int, seed: int, multilabel: bool) -> dict[str, int]:
    """Write a synthetic data set of about `count` base images to `out`; return fault counts.

    Same arguments give byte-identical files. `out` must be absent or an empty directory;
    everything is built in the sibling ``.<name>.tmp`` and moved into place at the end.
    """
    out = Path(out)
    _check_target(out, count)
    tmp = out.parent / f".{out.name}.tmp"
    _remove(tmp)
    rng = np.random.default_rng(seed)
    items = _make_base_items(count, rng, multilabel)
    items, counts = _plant_faults(items, count, rng, multilabel)
    tmp.mkdir(parents=True)
    try:
        _write_files(tmp, items, multilabel)
        _write_csvs(tmp, items, multilabel)
        _write_readme(tmp, seed=seed, count=count, multilabel=multilabel, counts=counts)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    logger.info("wrote %d synthetic images to %s (faults: %s)", len(items), out, counts)
    return counts


def _check_target(out: Path, count: int) -> None:
    if count < 1:
        raise ApexLoopError(f"count must be at least 1, got {count}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ApexLoopError(
            f"{out} already exists and is not an empty directory; "
            "remove it or choose a new output path"
        )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --- parts, textures and defects ---------------------------------------------------------


def _image_name(index: int) -> str:
    return f"img-{index:05d}"


def _group_name(index: int) -> str:
    return f"part-{index:04d}"


def _make_base_items(count: int, rng: np.random.Generator, multilabel: bool) -> list[_Item]:
    """Shots of physical parts, `count` images in all, named in generation order."""
    shots = _plan_shots(count, rng)
    kinds = _plan_multilabel(len(shots), rng) if multilabel else _plan_multiclass(len(shots), rng)
    items: list[_Item] = []
    for part, (n_shots, part_kinds) in enumerate(zip(shots, kinds, strict=True)):
        labels = _labels_for(part_kinds, multilabel)
        items += _make_part(rng, part_kinds, labels, n_shots, _group_name(part), len(items))
    return items


def _plan_shots(count: int, rng: np.random.Generator) -> list[int]:
    shots: list[int] = []
    total = 0
    while total < count:
        shots.append(int(rng.choice(len(_SHOTS_P), p=_SHOTS_P)) + 1)
        total += shots[-1]
    shots[-1] -= total - count  # overshoot is at most 2, so the last part keeps >= 1 shot
    return shots


def _quota(weights: tuple[float, ...], n: int) -> NDArray[np.int64]:
    """Split `n` into integer counts proportional to `weights` (largest remainder)."""
    raw = np.asarray(weights) * n / sum(weights)
    quota = np.floor(raw).astype(np.int64)
    by_remainder = np.argsort(-(raw - quota), kind="stable")
    quota[by_remainder[: n - int(quota.sum())]] += 1
    return quota


def _plan_multiclass(n_parts: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """One class per part by quota, so class shares hold and rare classes are not left out."""
    quota = _quota(CLASS_WEIGHTS, n_parts)
    if n_parts >= 2 * len(CLASSES):  # room to show every defect class at least once
        for index in range(1, len(CLASSES)):
            if quota[index] == 0:
                quota[index], quota[0] = 1, quota[0] - 1
    classes = rng.permutation(np.repeat(np.arange(len(CLASSES)), quota))
    return [() if c == 0 else (CLASSES[c],) for c in classes]


def _plan_multilabel(n_parts: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """0..3 distinct defect types per part (counts by quota); rarer types drawn less often."""
    sizes = rng.permutation(
        np.repeat(np.arange(len(_DEFECT_COUNT_P)), _quota(_DEFECT_COUNT_P, n_parts))
    )
    weights = np.asarray(CLASS_WEIGHTS[1:]) / sum(CLASS_WEIGHTS[1:])
    plans = []
    for size in sizes:
        picked = rng.choice(len(DEFECT_CLASSES), size=int(size), replace=False, p=weights)
        plans.append(tuple(DEFECT_CLASSES[i] for i in picked))
    return plans


def _labels_for(kinds: tuple[str, ...], multilabel: bool) -> tuple[str, ...]:
    if multilabel:
        return tuple(sorted(kinds))
    return kinds[:1] if kinds else (GOOD_CLASS,)


def _make_part(
    rng: np.random.Generator,
    kinds: tuple[str, ...],
    labels: tuple[str, ...],
    n_shots: int,
    group: str,
    first: int,
) -> list[_Item]:
    """Draw one part (texture + defects) and crop `n_shots` shots of it."""
    canvas = _make_texture(rng)
    masks = [(kind, _DRAWERS[kind](canvas, rng)) for kind in kinds]
    items = []
    for shot in range(n_shots):
        pixels, shot_masks = _shoot(canvas, masks, rng)
        name = _image_name(first + shot)
        items.append(_Item(name, group, pixels, shot_masks, labels, labels))
    return items


def _make_texture(rng: np.random.Generator) -> Canvas:
    """Grey part surface: machining stripes, illumination gradient, grain and a colour tint."""
    yy, xx = np.mgrid[0:_CANVAS, 0:_CANVAS].astype(np.float32)  # (S, S) each
    angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    stripes = rng.uniform(2, 6) * np.sin(2 * np.pi * along / rng.uniform(3, 12) + phase)
    slope_x, slope_y = rng.uniform(-0.15, 0.15, size=2)
    cx, cy = rng.uniform(0, _CANVAS, size=2)
    spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.6 * _CANVAS) ** 2))
    light = (
        slope_x * (xx - _CANVAS / 2) + slope_y * (yy - _CANVAS / 2) + rng.uniform(-15, 15) * spot
    )
    grey = rng.uniform(90, 170) + stripes + light + rng.normal(0, 3, size=(_CANVAS, _CANVAS))
    tint = rng.uniform(0.94, 1.06, size=3)
    return (grey[..., None] * tint).astype(np.float32)  # (S, S, 3)


def _place(points: NDArray[np.float64], pad: float, rng: np.random.Generator) -> NDArray[np.int32]:
    """Translate `points` (N, 2) as (x, y) to a random spot inside the safe canvas span."""
    lo, hi = _SAFE
    low = lo + pad - points.min(axis=0)
    high = hi - pad - points.max(axis=0)
    offset = rng.uniform(low, np.maximum(high, low))
    return np.round(points + offset).astype(np.int32)


def _alpha(layer: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Coverage 0..1 of an anti-aliased drawing; faint fringe below 10% dropped."""
    alpha = layer.astype(np.float32) / 255.0
    alpha[alpha < 0.1] = 0.0
    return alpha


def _stroke(points: NDArray[np.int32], width: int) -> NDArray[np.float32]:
    layer = np.zeros((_CANVAS, _CANVAS), np.uint8)
    cv2.polylines(layer, [points.reshape(-1, 1, 2)], False, 255, width, cv2.LINE_AA)
    return _alpha(layer)


def _draw_scratch(canvas: Canvas, rng: np.random.Generator) -> Mask:
    """Thin straight bright or dark line, 30-80 px long, 1-2 px wide."""
    length, angle = rng.uniform(30, 80), rng.uniform(0, np.pi)
    half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    alpha = _stroke(_place(np.stack([-half, half]), 3, rng), int(rng.integers(1, 3)))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    canvas += (sign * rng.uniform(60, 100) * alpha)[..., None]
    return alpha > 0


def _draw_hole(canvas: Canvas, rng: np.random.Generator) -> Mask:
    """Dark filled circle of radius 4-9 px with a brighter rim."""
    radius = int(rng.integers(4, 10))
    centre = tuple(int(v) for v in _place(np.zeros((1, 2)), radius + 4, rng)[0])
    rim_layer = np.zeros((_CANVAS, _CANVAS), np.uint8)
    cv2.circle(rim_layer, centre, radius + 1, 255, 2, cv2.LINE_AA)
    hole_layer = np.zeros((_CANVAS, _CANVAS), np.uint8)
    cv2.circle(hole_layer, centre, radius, 255, -1, cv2.LINE_AA)
    rim, hole = _alpha(rim_layer)[..., None], _alpha(hole_layer)[..., None]
    canvas += rng.uniform(40, 70) * rim
    canvas *= 1.0 - hole
    canvas += rng.uniform(10, 40) * hole  # the dark floor of the hole
    return (rim[..., 0] > 0) | (hole[..., 0] > 0)


def _draw_crack(canvas: Canvas, rng: np.random.Generator) -> Mask:
    """Dark jagged polyline: a random walk of 6-12 segments, 1-2 px wide."""
    n_segments = int(rng.integers(6, 13))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.7, size=n_segments))
    steps = rng.uniform(3, 8, size=(n_segments, 1)) * np.stack(
        [np.cos(heading), np.sin(heading)], axis=1
    )  # (N, 2)
    walk = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])  # (N + 1, 2)
    alpha = _stroke(_place(walk, 3, rng), int(rng.integers(1, 3)))
    canvas *= 1.0 - rng.uniform(0.55, 0.75) * alpha[..., None]
    return alpha > 0


def _draw_stain(canvas: Canvas, rng: np.random.Generator) -> Mask:
    """Soft darker, brownish elliptical Gaussian blob of radius 10-20 px."""
    radius, aspect, angle = rng.uniform(10, 20), rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
    cx, cy = _place(np.zeros((1, 2)), radius + 1, rng)[0]
    yy, xx = np.mgrid[0:_CANVAS, 0:_CANVAS].astype(np.float32)
    u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / radius
    v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / (radius * aspect)
    q = u**2 + v**2
    alpha = np.where(q <= 1.0, np.exp(-2.0 * q), 0.0).astype(np.float32)
    tint = np.array([0.8, 0.95, 1.25], np.float32)  # stains read brown: blue drops most
    canvas -= rng.uniform(40, 70) * alpha[..., None] * tint
    return alpha > 0


_DRAWERS: dict[str, Callable[[Canvas, np.random.Generator], Mask]] = {
    "scratch": _draw_scratch,
    "hole": _draw_hole,
    "crack": _draw_crack,
    "stain": _draw_stain,
}


def _shoot(
    canvas: Canvas, masks: list[tuple[str, Mask]], rng: np.random.Generator
) -> tuple[Pixels, tuple[tuple[str, Mask], ...]]:
    """One shot: a shifted crop, a brightness change and fresh sensor noise."""
    ox, oy = (int(v) for v in rng.integers(0, 2 * _MAX_SHIFT + 1, size=2))
    window = (slice(oy, oy + IMAGE_SIZE), slice(ox, ox + IMAGE_SIZE))
    noise = rng.normal(0, 2.5, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    shot = canvas[window] * rng.uniform(0.85, 1.15) + noise
    pixels = np.clip(np.round(shot), 0, 255).astype(np.uint8)
    return pixels, tuple((kind, mask[window].copy()) for kind, mask in masks)


# --- planted faults ----------------------------------------------------------------------


def _fault_quota(count: int) -> dict[str, int]:
    is_large = count >= _MIN_COUNT_FOR_ALL_FAULTS
    quota = {fault: round(frac * count) for fault, frac in _FAULT_FRACTIONS.items()}
    if is_large:
        quota = {fault: max(1, n) for fault, n in quota.items()}
    quota["corrupt"] = _N_CORRUPT if is_large else 0
    return {fault: quota[fault] for fault in FAULTS}


def _plant_faults(
    items: list[_Item], count: int, rng: np.random.Generator, multilabel: bool
) -> tuple[list[_Item], dict[str, int]]:
    """Give disjoint random base images one fault each; append duplicates of un-faulted ones."""
    quota = _fault_quota(count)
    order = [int(i) for i in rng.permutation(len(items))]
    picks: dict[str, list[int]] = {}
    start = 0
    for fault in ("corrupt", "blurred", "flipped_label", "exact_duplicate", "near_duplicate"):
        picks[fault] = sorted(order[start : start + quota[fault]])
        start += quota[fault]
    planted = list(items)
    for variant, index in enumerate(picks["corrupt"]):
        planted[index] = replace(
            items[index], fault="corrupt", payload=_corrupt(items[index], variant)
        )
    for index in picks["blurred"]:
        blurred = cv2.GaussianBlur(items[index].pixels, (0, 0), sigmaX=rng.uniform(2, 4))
        pixels = np.asarray(blurred, dtype=np.uint8)
        planted[index] = replace(items[index], fault="blurred", pixels=pixels)
    for index in picks["flipped_label"]:
        recorded = _flip_labels(items[index].true_labels, rng, multilabel)
        planted[index] = replace(items[index], fault="flipped_label", recorded_labels=recorded)
    planted += _make_duplicates(items, picks, rng)
    return planted, quota


def _flip_labels(
    labels: tuple[str, ...], rng: np.random.Generator, multilabel: bool
) -> tuple[str, ...]:
    """Multiclass: another class, uniformly. Multilabel: one defect type added or removed."""
    if not multilabel:
        others = [c for c in CLASSES if c != labels[0]]
        return (others[int(rng.integers(len(others)))],)
    absent = [c for c in DEFECT_CLASSES if c not in labels]
    if labels and (not absent or rng.random() < 0.5):
        dropped = labels[int(rng.integers(len(labels)))]
        return tuple(c for c in labels if c != dropped)
    return tuple(sorted((*labels, absent[int(rng.integers(len(absent)))])))


def _corrupt(item: _Item, variant: int) -> bytes:
    """Bytes of a broken file: empty, truncated, not an image, damaged IDAT (by `variant`)."""
    png = _encode_png(item.pixels)
    if variant % 4 == 0:
        return b""
    if variant % 4 == 1:
        return png[: len(png) // 2]
    if variant % 4 == 2:
        return b"upload interrupted: this file was meant to be an image\n"
    data = bytearray(png)
    at = png.index(b"IDAT")
    length = int.from_bytes(png[at - 4 : at], "big")
    middle = at + 4 + length // 2
    for offset in range(middle, middle + 64):
        data[offset] ^= 0xFF
    return bytes(data)


def _make_duplicates(
    items: list[_Item], picks: dict[str, list[int]], rng: np.random.Generator
) -> list[_Item]:
    """Copies of un-faulted images under new names and new part ids, numbered after the base."""
    next_name, next_part = len(items), len({item.group for item in items})
    dups: list[_Item] = []
    for k, index in enumerate(picks["exact_duplicate"]):
        src = items[index]
        # even: a plain byte copy; odd: re-saved, so bytes differ but pixels do not
        payload = _encode_png(src.pixels, _RESAVE_PNG_LEVEL) if k % 2 else None
        new = (_image_name(next_name + len(dups)), _group_name(next_part + len(dups)))
        dups.append(
            replace(
                src,
                name=new[0],
                group=new[1],
                fault="exact_duplicate",
                source=src.name,
                payload=payload,
            )
        )
    for k, index in enumerate(picks["near_duplicate"]):
        new = (_image_name(next_name + len(dups)), _group_name(next_part + len(dups)))
        variant = _NEAR_VARIANTS[k % len(_NEAR_VARIANTS)]
        dups.append(_near_duplicate(items[index], new, variant, rng))
    return dups


def _near_duplicate(
    src: _Item, name_group: tuple[str, str], variant: str, rng: np.random.Generator
) -> _Item:
    """A JPEG re-encode, a rescale round trip or a 1-3 px shift of `src`."""
    base = replace(
        src, name=name_group[0], group=name_group[1], fault="near_duplicate", source=src.name
    )
    if variant == "jpeg":
        return replace(
            base, payload=_encode_jpeg(src.pixels, int(rng.integers(85, 96))), suffix=".jpg"
        )
    warp = _rescale_warp(rng) if variant == "rescale" else _shift_warp(rng)
    # masks take the same warp; any pixel the defect touched stays in the mask
    defects = tuple((kind, warp(mask.astype(np.uint8) * 255) > 0) for kind, mask in src.defects)
    return replace(base, pixels=warp(src.pixels), defects=defects)


def _rescale_warp(rng: np.random.Generator) -> Callable[[Pixels], Pixels]:
    """Shrink or enlarge by 3-10 %, then resize back to the original size."""
    factor = 1.0 + (1 if rng.random() < 0.5 else -1) * rng.uniform(0.03, 0.1)
    side = round(IMAGE_SIZE * factor)

    def warp(array: Pixels) -> Pixels:
        small = cv2.resize(array, (side, side), interpolation=cv2.INTER_AREA)
        back = cv2.resize(small, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)
        return np.asarray(back, dtype=np.uint8)

    return warp


def _shift_warp(rng: np.random.Generator) -> Callable[[Pixels], Pixels]:
    """Translate by 1-3 px along each axis, edges reflected."""
    dx, dy = (int(v) * (1 if rng.random() < 0.5 else -1) for v in rng.integers(1, 4, size=2))
    matrix = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)

    def warp(array: Pixels) -> Pixels:
        size = (IMAGE_SIZE, IMAGE_SIZE)
        moved = cv2.warpAffine(array, matrix, size, borderMode=cv2.BORDER_REFLECT_101)
        return np.asarray(moved, dtype=np.uint8)

    return warp


def _encode_png(pixels: NDArray[np.uint8], level: int = _PNG_LEVEL) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def _encode_jpeg(pixels: Pixels, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# --- writing -----------------------------------------------------------------------------


def _rel_path(item: _Item, multilabel: bool) -> str:
    folder = MULTILABEL_FOLDER if multilabel else item.recorded_labels[0]
    return f"{folder}/{item.name}{item.suffix}"


def _tight_box(mask: Mask) -> list[int]:
    """[x0, y0, x1, y1] around the nonzero pixels, upper corner exclusive."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise RuntimeError("a drawn defect left an empty mask; this is a bug in pipeline.synth")
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _boxes_json(item: _Item) -> str:
    boxes = [[*_tight_box(mask), kind] for kind, mask in item.defects]
    return json.dumps(boxes, separators=(",", ":"))


def _write_files(root: Path, items: list[_Item], multilabel: bool) -> None:
    """Image files under images/; multiclass masks (255 = defect) mirrored under masks/."""
    for item in items:
        rel = _rel_path(item, multilabel)
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.payload if item.payload is not None else _encode_png(item.pixels))
        if multilabel or item.fault == "corrupt":
            continue
        union = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        for _, mask in item.defects:
            union[mask] = 255
        mask_path = (root / "masks" / rel).with_suffix(".png")
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.write_bytes(_encode_png(union))


def _write_csvs(root: Path, items: list[_Item], multilabel: bool) -> None:
    """labels.csv (what an annotator recorded) and truth.csv (what was planted), by path."""
    paths = {item.name: _rel_path(item, multilabel) for item in items}
    rows = sorted(items, key=lambda item: paths[item.name])
    suffix = "s" if multilabel else ""
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", f"label{suffix}", "group", "boxes"])
        for item in rows:
            labels = ";".join(item.recorded_labels)
            writer.writerow([paths[item.name], labels, item.group, _boxes_json(item)])
    with (root / "truth.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(
            ["path", f"true_label{suffix}", f"recorded_label{suffix}", "fault", "source"]
        )
        for item in rows:
            source = paths[item.source] if item.source else ""
            writer.writerow(
                [
                    paths[item.name],
                    ";".join(item.true_labels),
                    ";".join(item.recorded_labels),
                    item.fault,
                    source,
                ]
            )


def _write_readme(
    root: Path, *, seed: int, count: int, multilabel: bool, counts: dict[str, int]
) -> None:
    task = "multilabel" if multilabel else "multiclass"
    layout = "images/all/" if multilabel else "images/<label>/ and masks/<label>/"
    faults = "\n".join(f"- {fault}: {n}" for fault, n in counts.items())
    text = (
        "# Synthetic visual-inspection data set\n\n"
        f"Written by `pipeline.synth.generate` with seed {seed}, count {count}, task {task}.\n"
        f"128x128 RGB part-surface images in {layout}; defect classes "
        f"{', '.join(DEFECT_CLASSES)}; each part (group) has 1-3 shots.\n\n"
        "`labels.csv` holds the recorded annotations (path relative to images/, label(s), "
        "group, boxes as JSON [x0, y0, x1, y1, class] with exclusive upper corners).\n"
        "`truth.csv` lists the true labels and the planted fault of every file.\n\n"
        f"Planted faults:\n\n{faults}\n"
    )
    (root / "README.md").write_text(text, encoding="utf-8")
