"""Per-image features for the clean stage, computed from one decode of each image.

`image_features` is a pure function of the file (and settings): it decodes the image once and
returns small numbers (hashes, sharpness, brightness, size), never pixels, so the stage can run
it in worker processes and stream over any number of images with flat memory.
Scores derived from the features lie in [0, 1]; an image is an issue when its score passes the
threshold set in params.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import imagehash
import numpy as np
from PIL import Image

from pipeline.dedup import texture_level_shapes, texture_levels, texture_spectra
from pipeline.io import open_grey, pixel_sha256, preview_jpeg
from pipeline.params import CleanParams
from pipeline.paths import resolve_many_inside

_CHUNK = 16  # images per worker task (and per embedding batch)
_PREVIEW_SIDE = 160  # review-page thumbnails
_PATCH_SCALE = 128  # a larger short side is shrunk to this before the verification patch is cut
PATCH = 64  # side of the verification patch (near-duplicate check), pixels
_HASH_INPUT = 64  # at least the short side the perceptual hash (on a 32 px grid) starts from

# Runs `fn` on every item and returns the results in item order, wherever it likes (threads,
# processes, a cluster): the clean stage's hook for an orchestrator's task runner.
Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


def whash(image: Image.Image) -> imagehash.ImageHash:
    """imagehash.whash (Haar, 8x8, lowest LL removed) of the image area-resampled to the
    square imagehash would resize it to (2^n px, n = int(log2(short side))), computed directly.

    With the Haar wavelet, the level-k LL band of that square is its 8x8 block sums (scaled),
    and removing the lowest LL subtracts the same mean from every block, which a comparison
    with the median ignores: so the hash is "block sum > median block sum". This gives
    imagehash's bits (where no block sums tie at the median: on flat images imagehash's bits
    are the sign of floating-point round-off, here they are 0) in a tenth of the time of its
    round trip through PyWavelets. Area resampling, where imagehash uses Lanczos, costs less
    than half as much again and averages every pixel into its block (Lanczos rings at edges).
    """
    scale = max(1 << (min(image.size).bit_length() - 1), 8)  # 2^int(log2(short side))
    grey = np.asarray(image if image.mode == "L" else image.convert("L"))
    if grey.shape != (scale, scale):
        grey = cv2.resize(grey, (scale, scale), interpolation=cv2.INTER_AREA)
    block = scale // 8
    sums = grey.reshape(8, block, 8, block).sum(axis=(1, 3), dtype=np.int32)
    ordered = np.sort(sums, axis=None)
    return imagehash.ImageHash(2 * sums > ordered[31] + ordered[32])  # above the median


def hash_value(found: imagehash.ImageHash) -> int:
    """A 64-bit hash's bits as an unsigned integer, first bit highest: int(str(found), 16)
    without the hex string."""
    return int.from_bytes(np.packbits(found.hash.ravel()).tobytes(), "big")


HASHES: dict[str, Callable[[Image.Image], imagehash.ImageHash]] = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "whash": whash,
    "ahash": imagehash.average_hash,
}


@dataclass(frozen=True)
class Features:
    """What the checks need to know about one image."""

    pixel_sha256: str
    perceptual_hash: int  # 64-bit hash of the chosen kind, as an unsigned integer
    sharpness: float  # variance of the Laplacian of the grey image at working size
    bright_p05: float  # 5th percentile of grey level (at working size), in [0, 1]
    bright_p95: float  # 95th percentile of grey level (at working size), in [0, 1]
    embedding: np.ndarray | None = None  # float32 (D,) for label issues, when asked for
    preview: Blob | None = None  # where its preview JPEG was written, when asked for


@dataclass(frozen=True)
class Blob:
    """One image's bytes (its preview JPEG) inside a chunk file: a chunk of images writes one
    file (a file per image costs more in file-system calls than making its contents)."""

    file: Path
    offset: int
    length: int

    def read(self, contents: bytes | None = None) -> bytes:
        """Its bytes: cut from `contents` (its whole file, when already read), else read."""
        if contents is not None:
            return contents[self.offset : self.offset + self.length]
        with self.file.open("rb") as handle:
            handle.seek(self.offset)
            return handle.read(self.length)


def _working(grey: np.ndarray, working_size: int) -> np.ndarray:
    """Shrink so the longest side is at most `working_size` (0 keeps native resolution): an
    integer box filter for the whole part of the factor, bilinear for the rest (under 2x);
    a sixth of the cost of OpenCV's area resampling at a fractional factor."""
    longest = max(grey.shape)
    if working_size == 0 or longest <= working_size:
        return grey
    scale = working_size / longest
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    factor = longest // working_size
    if factor > 1:
        grey = np.asarray(Image.fromarray(np.ascontiguousarray(grey)).reduce(factor))
    if grey.shape[::-1] == size:
        return grey
    return cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)


def _percentiles(grey: np.ndarray, qs: Sequence[float]) -> list[float]:
    """np.percentile(grey, qs) (linear interpolation) of 8-bit pixels from their histogram:
    one counting pass instead of a partial sort per percentile, and one lookup for all the
    ranks (per image, each NumPy call's overhead costs as much as counting 10^4 pixels)."""
    cumulative = np.cumsum(cv2.calcHist([grey], [0], None, [256], [0, 256]))  # (256,)
    ranks = [(grey.size - 1) * q / 100.0 for q in qs]
    bounds = [bound for rank in ranks for bound in (math.floor(rank), math.ceil(rank))]
    found = np.searchsorted(cumulative, bounds, "right").tolist()
    return [
        float(low + (high - low) * (rank - math.floor(rank)))
        for rank, low, high in zip(ranks, found[::2], found[1::2], strict=True)
    ]


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of 8-bit grey pixels (H, W), borders mirrored:
    the integer Laplacian fits 16 bits (|value| <= 4 * 255) and its sum and sum of squares are
    exact in float64 (below 2^53 for any image under 2^33 pixels). Two vectorised reductions:
    OpenCV's meanStdDev has no fast path for 16-bit input and costs 5x as much."""
    laplacian = cv2.Laplacian(grey, cv2.CV_16S)
    count = laplacian.size
    mean = cv2.sumElems(laplacian)[0] / count
    return max(cv2.norm(laplacian, cv2.NORM_L2SQR) / count - mean * mean, 0.0)


def _hash_input(image: Image.Image, grey: np.ndarray) -> Image.Image:
    """The grey image box-filtered by an integer factor to _HASH_INPUT-2x that px on its short
    side: imagehash then resamples to its 32 px (phash) or 8-9 px grid from this instead of
    from full resolution. `image` stands in for `grey` when it is 8-bit grey (then it holds
    the same pixels), which saves wrapping the array in a new Pillow image."""
    factor = max(1, min(grey.shape) // _HASH_INPUT)
    source = image if image.mode == "L" else Image.fromarray(grey)
    return source.reduce(factor) if factor > 1 else source


def verification_patch(grey: np.ndarray) -> np.ndarray:
    """(PATCH, PATCH) uint8: the centre of the image as it would be if shrunk so its short
    side is at most _PATCH_SCALE (never enlarged: that would invent texture), mirrored out to
    PATCH if smaller.

    Fine texture at a fixed scale, which the near-duplicate check correlates: a re-encoded,
    resampled or slightly shifted copy keeps it, another part of the same kind does not.
    Only the centre square that becomes the patch is shrunk (a quarter of the image or less).
    """
    short = min(grey.shape)
    if short > _PATCH_SCALE:
        side = round(PATCH * short / _PATCH_SCALE)
        top, left = (grey.shape[0] - side) // 2, (grey.shape[1] - side) // 2
        grey = grey[top : top + side, left : left + side]
        factor = side // PATCH
        if factor > 1:  # an integer box filter does most of the shrinking, at a third of the cost
            grey = np.asarray(Image.fromarray(np.ascontiguousarray(grey)).reduce(factor))
        return cv2.resize(grey, (PATCH, PATCH), interpolation=cv2.INTER_AREA)
    short_y, short_x = max(0, PATCH - grey.shape[0]), max(0, PATCH - grey.shape[1])
    if short_y or short_x:
        grey = np.pad(
            grey,
            ((short_y // 2, short_y - short_y // 2), (short_x // 2, short_x - short_x // 2)),
            mode="symmetric",
        )
    top, left = (grey.shape[0] - PATCH) // 2, (grey.shape[1] - PATCH) // 2
    return np.ascontiguousarray(grey[top : top + PATCH, left : left + PATCH])


def _measure(image: Image.Image, grey: np.ndarray, hash_name: str, working_size: int) -> Features:
    small = _working(grey, working_size)
    low, high = (value / 255.0 for value in _percentiles(small, (5, 95)))
    return Features(
        pixel_sha256=pixel_sha256(image, grey),
        perceptual_hash=hash_value(HASHES[hash_name](_hash_input(image, grey))),
        sharpness=laplacian_variance(small),
        bright_p05=float(low),
        bright_p95=float(high),
    )


def image_features(path: Path, max_pixels: int, hash_name: str, working_size: int) -> Features:
    """Decode once; hash the pixels, perceptual-hash, and measure sharpness and brightness."""
    return _measure(*open_grey(path, max_pixels), hash_name, working_size)


def blur_score(sharpness: float, absolute: float, class_median: float, relative: float) -> float:
    """In [0, 1]; above 0.5 exactly when sharpness is under the absolute threshold or under
    `relative` x the median sharpness of the image's class (textures differ by product)."""
    limit = max(absolute, relative * class_median)
    if limit <= 0:
        return 0.0
    score = 1.0 / (1.0 + sharpness / limit)
    # Rounding puts a sharpness just under the limit on exactly 0.5; keep the decision exact.
    return max(score, math.nextafter(0.5, 1.0)) if sharpness < limit else score


def dark_score(bright_p95: float) -> float:
    """In [0, 1]: 1 when even the brightest 5% of pixels are black."""
    return 1.0 - bright_p95


def light_score(bright_p05: float) -> float:
    """In [0, 1]: 1 when even the darkest 5% of pixels are white."""
    return bright_p05


def odd_size_score(width: int, height: int, min_side: int) -> float:
    """In [0, 1]: the larger of how elongated the image is (1 - short/long side) and how far
    its short side falls below `min_side`."""
    short, long = min(width, height), max(width, height)
    return max(1.0 - short / long, max(0.0, 1.0 - short / min_side))


def _write_blobs(file: Path, blobs: list[bytes]) -> list[Blob]:
    """Write a chunk's blobs one after another to `file`; where each lies."""
    file.write_bytes(b"".join(blobs))
    offsets = np.cumsum([0, *map(len, blobs)])
    return [Blob(file, int(offsets[k]), len(blob)) for k, blob in enumerate(blobs)]


_SPECTRA_FILES = dict(  # a patch's texture_levels, coarsest first: file names and shapes
    zip(("quarter.npy", "half.npy", "spectra.npy"), texture_level_shapes(PATCH), strict=True)
)


def _create_spectra(folder: Path, rows: int) -> list[int]:
    """Create `folder`'s spectra files (the texture_levels of patches' texture spectra) for
    `rows` rows, all zeros (sparse files: nothing is written yet); where each file's first
    row starts, in bytes."""
    starts = []
    for name, shape in _SPECTRA_FILES.items():
        table = np.lib.format.open_memmap(folder / name, "w+", np.complex64, (rows, *shape))
        starts.append(table.offset)
        del table
    return starts


def _write_spectra(folder: Path, starts: list[int], rows: list[int], spectra: np.ndarray) -> None:
    """Write the texture_levels of texture spectra (K, PATCH, PATCH // 2 + 1) as rows `rows`
    of `folder`'s spectra files (made by _create_spectra, whose first rows start at `starts`):
    each worker writes its own rows in place, so nobody gathers them afterwards."""
    for name, start, table in zip(_SPECTRA_FILES, starts, texture_levels(spectra), strict=True):
        width = table[0].nbytes
        descriptor = os.open(folder / name, os.O_WRONLY)
        try:
            for row, values in zip(rows, table, strict=True):
                os.pwrite(descriptor, values.data, start + row * width)
        finally:
            os.close(descriptor)


def read_spectra(folder: Path) -> list[np.ndarray]:
    """Each row's texture_levels (coarsest first, the whole texture spectrum last, (N, PATCH,
    PATCH // 2 + 1) complex64), zeros where a row has none: `folder`'s spectra files,
    memory-mapped read-only."""
    return [np.load(folder / name, mmap_mode="r") for name in _SPECTRA_FILES]


def confirms_near_duplicates(params: CleanParams) -> bool:
    """Whether near duplicates are checked and hash matches confirmed by texture."""
    return params.actions.near_duplicate != "off" and params.near_duplicate_min_correlation > 0


def _features_of_chunk(
    jobs: list[tuple[int, str, int]],
    root: Path,
    params: CleanParams,
    embedding: str | None,
    scratch: Path | None,
    spectra_starts: list[int] | None,
) -> list[Features]:
    """Features of a chunk of images (row index, path under `root`, pixels), each decoded once;
    embeddings computed as one batch; with `scratch` (a folder), the chunk's preview JPEGs are
    written there (a file), and with `spectra_starts` too, its patches' texture spectra (into
    their rows of the spectra files there, see _create_spectra)."""
    paths = resolve_many_inside(root, [path for _, path, _ in jobs])
    decoded = [open_grey(path, pixels) for path, (_, _, pixels) in zip(paths, jobs, strict=True)]
    images, greys = [image for image, _ in decoded], [grey for _, grey in decoded]
    found = [
        _measure(i, g, params.hash, params.working_size) for i, g in zip(images, greys, strict=True)
    ]
    if scratch is not None:
        pairs = zip(images, greys, strict=True)
        jpegs = [preview_jpeg(image, grey, _PREVIEW_SIDE) for image, grey in pairs]
        shown = _write_blobs(scratch / f"{jobs[0][0]}.jpgs", jpegs)
        found = [replace(f, preview=p) for f, p in zip(found, shown, strict=True)]
    if scratch is not None and spectra_starts is not None:
        spectra = texture_spectra(np.stack([verification_patch(grey) for grey in greys]))
        _write_spectra(scratch, spectra_starts, [row for row, _, _ in jobs], spectra)
    if embedding is None:
        return found
    from pipeline.embeddings import embed_batch  # torch: loaded only where label issues are on

    vectors = embed_batch(images, greys, embedding, params.label_issues.embedding_size)
    return [replace(f, embedding=v) for f, v in zip(found, vectors, strict=True)]


def one_thread_per_worker() -> None:
    """Initializer of worker processes that run torch: workers share the cores; torch would
    oversubscribe them."""
    import torch  # here, so that the clean stage loads torch only for its label-issue check

    torch.set_num_threads(1)


def compute_features(
    root: Path,
    rows: Sequence[dict[str, Any]],
    params: CleanParams,
    embedding: str | None = None,
    scratch: Path | None = None,
    mapper: Mapper | None = None,
) -> list[Features | None]:
    """Features of every readable row (None for unreadable ones), in row order.

    Chunks of images are decoded in `params.workers` processes; only small records (and
    embeddings when `embedding` names a kind) come back, never pixels. With `scratch` (a
    folder), each readable image's preview JPEG (`Features.preview` says where) and, when near
    duplicates are confirmed by texture, its verification patch's texture spectra (its rows in
    the spectra files there, read_spectra) are made from the same decode and written there, so
    memory stays flat however many images there are.
    `mapper` (fn, chunks) -> results in chunk order replaces the local process pool, e.g. with
    an orchestrator's task runner; the work it ships gets absolute paths, so it does not
    depend on the working directory of whoever runs it.
    """
    readable = [index for index, row in enumerate(rows) if not row["is_unreadable_issue"]]
    jobs = [(i, rows[i]["path"], rows[i]["width"] * rows[i]["height"]) for i in readable]
    chunks = [jobs[start : start + _CHUNK] for start in range(0, len(jobs), _CHUNK)]
    if mapper is not None:
        root = root.absolute()
        scratch = scratch.absolute() if scratch is not None else None
    spectra_starts = None
    if scratch is not None and confirms_near_duplicates(params):
        spectra_starts = _create_spectra(scratch, len(rows))
    work = partial(
        _features_of_chunk,
        root=root,
        params=params,
        embedding=embedding,
        scratch=scratch,
        spectra_starts=spectra_starts,
    )
    if mapper is not None:
        found = [features for result in mapper(work, chunks) for features in result]
    elif params.workers == 1:
        found = [features for chunk in chunks for features in work(chunk)]
    else:
        # without embeddings the workers run no torch: forking a process that has not loaded
        # it (0.1 GB instead of 1 GB) starts the pool in a third of the time
        initializer = one_thread_per_worker if embedding is not None else None
        with ProcessPoolExecutor(params.workers, initializer=initializer) as pool:
            found = [features for result in pool.map(work, chunks) for features in result]
    features: list[Features | None] = [None] * len(rows)
    for index, value in zip(readable, found, strict=True):
        features[index] = value
    return features


def score_checks(
    issue: dict[str, Any], feature: Features | None, class_median: float, params: CleanParams
) -> None:
    """Set `<check>_score` and `is_<check>_issue` of the per-image checks on `issue` (scores
    are null where a check is off, or the image is unreadable)."""
    thresholds = {
        "blur": 0.5,
        "dark": params.dark_threshold,
        "light": params.light_threshold,
        "odd_size": params.odd_size_threshold,
    }
    scores: dict[str, float | None] = dict.fromkeys(thresholds)
    if feature is not None:
        scores["blur"] = blur_score(
            feature.sharpness, params.blur_absolute, class_median, params.blur_relative
        )
        scores["dark"] = dark_score(feature.bright_p95)
        scores["light"] = light_score(feature.bright_p05)
        scores["odd_size"] = odd_size_score(
            issue["width"], issue["height"], params.odd_size_min_side
        )
    for check, threshold in thresholds.items():
        value = scores[check] if getattr(params.actions, check) != "off" else None
        issue[f"{check}_score"] = value
        # blur: strictly above 0.5 means strictly below a threshold; others: at or above
        passed = value is not None and (
            value > threshold if check == "blur" else value >= threshold
        )
        issue[f"is_{check}_issue"] = passed
