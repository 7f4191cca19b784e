"""Duplicate grouping: exact (equal keys) and near (perceptual hashes within a Hamming distance)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from math import comb
from typing import Any

import cv2
import numpy as np
import scipy.fft
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from threadpoolctl import ThreadpoolController

from pipeline.manifest import GROUP_COLUMNS

_CHUNK = 16384  # queries per vectorised step: bounds memory
_VALUES_PER_STEP = 1 << 17  # spectrum values of the pairs correlated per vectorised step:
# bounds memory and fits cache (about 230 pairs of half-resolution spectra)
MAX_SHIFT = 4  # pixels (of the verification patch's scale) a near duplicate may be moved by
# texture_agrees' cheaper tests, in turn: (patch side / band, fraction of the threshold to reach)
_COARSE_TESTS = ((8, 0.7), (4, 0.5))  # a quarter, then half the resolution


def group_exact_duplicates(keys: Sequence[Hashable | None]) -> list[int | None]:
    """Group ids for rows sharing a key with at least one other row; None elsewhere.

    Ids are numbered 0, 1, ... in order of each group's first row, so the same input always
    gives the same ids. Rows with key None (e.g. unreadable images) are never grouped.
    """
    first_seen: dict[Hashable, int] = {}
    counts: dict[Hashable, int] = {}
    for key in keys:
        if key is not None:
            first_seen.setdefault(key, len(first_seen))
            counts[key] = counts.get(key, 0) + 1
    numbering: dict[Hashable, int] = {}
    for key in sorted((k for k in first_seen if counts[k] > 1), key=first_seen.__getitem__):
        numbering[key] = len(numbering)
    return [numbering.get(key) if key is not None else None for key in keys]


def _block_widths(blocks: int) -> list[int]:
    """Split 64 bits into `blocks` contiguous widths differing by at most one."""
    base, extra = divmod(64, blocks)
    return [base + (index < extra) for index in range(blocks)]


def _probe_masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit value with at most `radius` bits set."""
    masks = [0]
    for count in range(1, radius + 1):
        masks += [sum(1 << bit for bit in bits) for bits in combinations(range(width), count)]
    return np.array(masks, dtype=np.int64)


def _cost(n: int, max_distance: int, blocks: int) -> float:
    """Expected probes plus candidates per query for random hashes split into `blocks`."""
    radius = max_distance // blocks
    return sum(
        sum(comb(width, k) for k in range(radius + 1)) * (1 + n / 2**width)
        for width in _block_widths(blocks)
    )


def _block_pairs(
    hashes: np.ndarray, shift: int, width: int, radius: int, max_distance: int
) -> Iterator[np.ndarray]:
    """Pairs (i, j), i < j, within max_distance whose block of `width` bits at `shift` differs
    by at most `radius` bits. A dense table per block value (2^width entries, width <= 22)
    replaces binary search: each probe is two array lookups."""
    keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    counts_of = np.bincount(keys, minlength=1 << width)
    starts_of = np.cumsum(counts_of) - counts_of
    masks = _probe_masks(width, radius)
    for start in range(0, len(hashes), _CHUNK):
        queries = np.arange(start, min(len(hashes), start + _CHUNK))
        probes = (keys[queries][:, None] ^ masks[None, :]).ravel()  # (Q * M,)
        low, counts = starts_of[probes], counts_of[probes]
        owner = np.repeat(np.repeat(queries, len(masks)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        other = order[np.repeat(low, counts) + offsets]
        later = other > owner
        owner, other = owner[later], other[later]
        close = np.bitwise_count(hashes[owner] ^ hashes[other]) <= max_distance
        yield np.stack([owner[close], other[close]], axis=1)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs (i, j), i < j, of 64-bit hashes within `max_distance` bits, sorted, exact.

    Multi-index hashing (Norouzi et al.): split each hash into m blocks; two hashes within d
    bits differ by at most d // m bits in at least one block (pigeonhole), so probing each
    block's table with every mask of at most d // m bits finds every pair without comparing
    all pairs. m (3..8) is chosen to minimise the expected probes plus candidates per query
    (bench/near_duplicate_search.py shows the scaling). The search runs over the distinct
    hash values: images that look alike often share one (5,296 synthetic images have 2,153
    values), and their rows' pairs are then spelled out directly.
    """
    values, inverse, counts = np.unique(
        np.asarray(hashes, dtype=np.uint64), return_inverse=True, return_counts=True
    )
    inverse = inverse.ravel()
    blocks = min(range(3, 9), key=lambda m: _cost(len(values), max_distance, m))
    found = [np.empty((0, 2), dtype=np.int64)]
    shift = 0
    for width in _block_widths(blocks):
        found += _block_pairs(values, shift, width, max_distance // blocks, max_distance)
        shift += width
    # a pair of values found through several blocks counts once; one int64 key per pair
    keys = _unique_keys(np.concatenate(found), len(values))
    repeated = np.flatnonzero(counts > 1)  # and pairs of rows sharing a value
    first, second = _rows_of_value_pairs(
        np.r_[keys // len(values), repeated], np.r_[keys % len(values), repeated], inverse, counts
    )
    n = len(inverse)
    keys = np.sort(np.minimum(first, second) * n + np.maximum(first, second))
    return np.stack([keys // n, keys % n], axis=1)


def _unique_keys(pairs: np.ndarray, n: int) -> np.ndarray:
    """Sorted distinct keys i * n + j of (P, 2) pairs (i, j) of indices below n."""
    keys = np.sort(pairs[:, 0] * n + pairs[:, 1])
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys


def _rows_of_value_pairs(
    a: np.ndarray, b: np.ndarray, inverse: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (first, second): for each pair (a[k], b[k]) of value indices, every row
    holding value a[k] with every row holding value b[k] (a[k] == b[k]: every two rows
    holding it, once); `inverse` gives each row's value index, `counts` each value's rows."""
    order = np.argsort(inverse, kind="stable")  # rows grouped by value
    starts = np.cumsum(counts) - counts
    sizes = counts[a] * counts[b]
    offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    width = np.repeat(counts[b], sizes)
    first = order[np.repeat(starts[a], sizes) + offsets // width]
    second = order[np.repeat(starts[b], sizes) + offsets % width]
    keep = (first < second) | np.repeat(a != b, sizes)  # within a value: each pair once
    return first[keep], second[keep]


def texture_spectra(patches: np.ndarray) -> np.ndarray:
    """(K, P, P//2+1) complex64: the spectrum of each patch's fine texture, near-whitened and
    scaled so the patch correlates with itself at exactly 1. A flat patch has none (zeros).

    The texture is the patch minus its Gaussian blur (sigma 3 px), squashed by tanh at twice
    its median absolute deviation, so a few strong edges (a hole, a part's outline, which
    other parts of the kind share) weigh no more than the grain. Its spectrum (Hann window)
    is divided by its magnitude plus half its mean magnitude: correlation then weighs the
    arrangement of texture at every frequency rather than the energy of the strongest, and
    bands an image hardly has (smooth or upscaled images) are not amplified into noise.
    """
    side = patches.shape[-1]
    x = patches.astype(np.float32)
    x -= x.mean(axis=(1, 2), keepdims=True)  # the blur of a constant is itself: a flat patch
    blur = _blur_operator(side)  # is exactly 0 then, whatever the operator's round-off
    x -= blur.T @ x @ blur
    sample = x[:, ::2, ::2].reshape(len(x), -1)  # a quarter of the pixels estimate the spread
    centre = _median(sample)
    deviation = _median(np.abs(sample - centre[:, None]))
    x = _tanh(x / (2 * deviation[:, None, None] + 1e-3))
    x = (x - x.mean(axis=(1, 2), keepdims=True)) * _hann(side)
    spectra = scipy.fft.rfft2(x)
    magnitude = np.abs(spectra)
    divisor = magnitude + (0.5 * magnitude.mean(axis=(1, 2), keepdims=True) + 1e-6)
    magnitude /= divisor  # the whitened spectrum's magnitude
    scale = _unit_scale(magnitude, side)
    spectra *= (scale[:, None, None] / divisor).astype(np.float32)
    return spectra.astype(np.complex64, copy=False)


@functools.cache
def _blur_operator(side: int) -> np.ndarray:
    """(side, side) float32 B with x @ B = cv2.GaussianBlur (sigma 3 px, borders reflected,
    OpenCV's 25-tap float kernel) along each row of x: blurring a batch of patches is then two
    batched matrix products (B.T @ x @ B) instead of a filter call per patch."""
    kernel = cv2.getGaussianKernel(25, 3, cv2.CV_32F).ravel().astype(np.float64)
    radius = len(kernel) // 2
    operator = np.zeros((side, side))
    for out in range(side):
        for offset, weight in zip(range(-radius, radius + 1), kernel, strict=True):
            source = out + offset
            while not 0 <= source < side:  # reflect about the border: dcba|abcd|dcba
                source = -source - 1 if source < 0 else 2 * side - source - 1
            operator[source, out] += weight
    return operator.astype(np.float32)


@functools.cache
def _hann(side: int) -> np.ndarray:
    """(side, side) float32 two-dimensional Hann window."""
    return np.outer(np.hanning(side), np.hanning(side)).astype(np.float32)


def _median(values: np.ndarray) -> np.ndarray:
    """np.median(values, axis=1) of (K, N) float32 values: NumPy's vectorised sort of float32
    takes half the time of the partial sort np.median does."""
    n = values.shape[1]
    ordered = np.sort(values, axis=1)
    return (ordered[:, (n - 1) // 2] + ordered[:, n // 2]) / 2


def _tanh(x: np.ndarray) -> np.ndarray:
    """np.tanh of float32 values as 1 - 2 / (e^2x + 1) (within 2.5e-7), from NumPy's
    vectorised exp: its float32 tanh is not vectorised and costs half as much again."""
    with np.errstate(over="ignore"):  # e^2x = inf gives 1, as it should
        return 1 - 2 / (np.exp(2 * x) + 1)


def _weights(rows: int, columns: int) -> np.ndarray:
    """How many of the full spectrum's values each rfft column stands for: two, but the first
    and (for a whole even-sided rfft grid) the last, its own mirror image."""
    counted = np.full(columns, 2.0)
    counted[0] = 1.0
    if rows == 2 * (columns - 1):
        counted[-1] = 1.0
    return counted


def _unit_scale(magnitude: np.ndarray, side: int) -> np.ndarray:
    """(K,) factors that scale rfft spectra (whole, or band-limited) of patches of `side` px,
    whose magnitudes are (K, R, C) `magnitude`, so each correlates with itself at exactly 1;
    0 for all-zero ones."""
    counted = _weights(*magnitude.shape[-2:])
    energy = (np.square(magnitude) * counted).sum(axis=(1, 2)) / side**2
    return np.where(energy > 1e-12, 1 / np.sqrt(np.maximum(energy, 1e-12)), 0)


def _unit_energy(spectra: np.ndarray, side: int) -> np.ndarray:
    """(K, R, C) complex64: `spectra` scaled as _unit_scale says."""
    scale = _unit_scale(np.abs(spectra), side)
    return (spectra * scale[:, None, None]).astype(np.complex64)


def _shift_bases(
    rows: int, columns: int, side: int, max_shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """The inverse DFT's rows for shifts -max_shift..max_shift only, as real float32 matrices
    that act on complex64 values viewed as interleaved (real, imaginary) float32 pairs: along
    x (2 columns, 2 shifts), the complex product by the rfft's columns weighted as in _weights,
    with the 1 / side^2; along y (2 rows, shifts), the real part of the product (row r stands
    for the frequency fftfreq order gives it: 0, 1, ..., then the negative ones). Real
    products skip the imaginary part nobody reads and run faster than complex ones."""
    shifts = np.r_[0 : max_shift + 1, -max_shift:0]
    along_x = (
        _weights(rows, columns)[:, None]
        * np.exp(2j * np.pi * np.outer(np.arange(columns), shifts) / side)
        / side**2
    )
    real_x = np.empty((2 * columns, 2 * len(shifts)), dtype=np.float32)
    real_x[0::2, 0::2], real_x[0::2, 1::2] = along_x.real, along_x.imag
    real_x[1::2, 0::2], real_x[1::2, 1::2] = -along_x.imag, along_x.real
    frequencies = np.fft.fftfreq(rows, 1 / rows)
    along_y = np.exp(2j * np.pi * np.outer(frequencies, shifts) / side)
    real_y = np.empty((2 * rows, len(shifts)), dtype=np.float32)
    real_y[0::2], real_y[1::2] = along_y.real, -along_y.imag
    return real_x, real_y


def band_limited(spectra: np.ndarray, band: int) -> np.ndarray:
    """(K, 2 band + 1, band + 1) complex64: the frequencies of each texture spectrum up to
    `band` cycles per patch along each axis, rescaled to unit energy; band = P / 4 is the
    texture at half resolution, in a quarter of the numbers."""
    side = spectra.shape[-2]
    rows = np.r_[0 : band + 1, side - band : side]
    # contiguous: gathering rows of a strided copy takes several times as long
    return _unit_energy(np.ascontiguousarray(spectra[:, rows, : band + 1]), side)


@functools.cache
def _thread_pools() -> ThreadpoolController:
    """This process's native thread pools (BLAS, OpenMP), looked up once: a lookup reads every
    loaded library (35 ms)."""
    return ThreadpoolController()


def spectra_correlation(
    spectra: np.ndarray,
    pairs: np.ndarray,
    max_shift: int = MAX_SHIFT,
    threads: int = 1,
    side: int | None = None,
) -> np.ndarray:
    """(M,) float in [-1, 1]: for each pair (i, j) of rows of `spectra` (texture_spectra of
    patches of side P, or their band_limited parts: then `side` = P), the peak of their phase
    correlation over shifts of at most `max_shift` px along each axis.

    1 for identical patches (up to a shift in range); near 0 for unrelated texture. Phase
    correlation is standard image registration (Kuglin and Hines); here only its peak value
    is used, as evidence that two images show the same surface. Only the (2 max_shift + 1)^2
    shifts that count are evaluated: two small matrix products per pair (the inverse DFT's
    rows for those shifts, one axis after the other) instead of a whole inverse FFT, 5x
    faster. Steps of pairs run in `threads` threads (numpy and one-thread BLAS release the GIL).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    rows, columns = spectra.shape[-2:]
    along_x, along_y = _shift_bases(rows, columns, side or rows, max_shift)
    width = along_y.shape[1]

    def peaks(step: np.ndarray) -> np.ndarray:
        cross = np.take(spectra, step[:, 1], axis=0)
        np.conjugate(cross, out=cross)
        cross *= np.take(spectra, step[:, 0], axis=0)  # (S, R, C) complex64
        by_x = cross.view(np.float32).reshape(-1, 2 * columns) @ along_x  # (S * R, 2 shifts)
        by_x = by_x.view(np.complex64).reshape(len(step), rows, width)
        by_x = np.ascontiguousarray(by_x.transpose(0, 2, 1)).reshape(-1, rows)  # (S * shifts, R)
        return (by_x.view(np.float32) @ along_y).reshape(len(step), -1).max(axis=1)

    per_step = max(1, _VALUES_PER_STEP // (rows * columns))
    steps = [pairs[start : start + per_step] for start in range(0, len(pairs), per_step)]
    if threads == 1:  # BLAS may use its own threads
        found = [peaks(step) for step in steps]
    else:
        with _thread_pools().limit(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
            found = list(pool.map(peaks, steps))
    return np.concatenate([np.empty(0, np.float32), *found]).astype(np.float32)


def texture_level_shapes(side: int) -> list[tuple[int, ...]]:
    """Shapes of one patch's texture_levels, for patches of `side` px."""
    spectrum = np.zeros((1, side, side // 2 + 1), dtype=np.complex64)
    return [level.shape[1:] for level in texture_levels(spectrum)]


def texture_levels(spectra: np.ndarray) -> list[np.ndarray]:
    """What texture_agrees tests in turn, coarsest first: the band-limited parts of texture
    `spectra` at a quarter and at half the resolution, then the whole spectra."""
    side = spectra.shape[-2]
    limited = [band_limited(spectra, side // divisor) for divisor, _ in _COARSE_TESTS]
    return [*limited, spectra]


def texture_agrees(
    levels: Sequence[np.ndarray], pairs: np.ndarray, threshold: float, threads: int = 1
) -> np.ndarray:
    """(M,) bool: whether each pair's texture correlation (spectra_correlation of the whole
    spectra, the last of texture_levels `levels`) reaches `threshold`, computed only for pairs
    that pass the cheaper tests first: their correlation at a quarter of the resolution
    reaches 0.7 x the threshold, then at half resolution half of it.

    Each coarser test costs a third to a quarter as much as the next and lets few distinct
    pairs through; neither loses a true one in practice: on magnetic_tile and synthetic data
    every pair correlating at 0.4 or more correlated at least 0.87x as much at half resolution
    and 0.71x (and 0.46) at a quarter. Of the synthetic set's 495,733 hash pairs, 1 in 8
    passes the quarter test and 1 in 90 the half one too.
    """
    side = levels[-1].shape[-2]
    fractions = [*(fraction for _, fraction in _COARSE_TESTS), 1.0]
    alive = np.arange(len(pairs))
    for level, fraction in zip(levels, fractions, strict=True):
        found = spectra_correlation(level, pairs[alive], threads=threads, side=side)
        alive = alive[found >= fraction * threshold]
    agrees = np.zeros(len(pairs), dtype=bool)
    agrees[alive] = True
    return agrees


def patch_correlation(
    patches: np.ndarray, pairs: np.ndarray, max_shift: int = MAX_SHIFT
) -> np.ndarray:
    """spectra_correlation of the texture spectra of (a few, in memory) `patches`."""
    return spectra_correlation(texture_spectra(patches), pairs, max_shift)


def group_near_duplicates(
    hashes: Sequence[int | None],
    max_distance: int,
    confirm: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[int | None]:
    """Group ids (numbered as in group_exact_duplicates) of rows connected by chains of
    near-duplicate pairs; rows with no hash or no near duplicate get None.

    A pair is near when its hashes lie within `max_distance` bits and, if `confirm` is given,
    confirm(pairs of row indices (M, 2)) -> (M,) bool says so (e.g. by correlating texture).
    """
    present = np.array([index for index, value in enumerate(hashes) if value is not None])
    values = np.array([hashes[index] for index in present], dtype=np.uint64)
    pairs = near_duplicate_pairs(values, max_distance)
    if confirm is not None and len(pairs):
        pairs = pairs[confirm(present[pairs])]
    graph = coo_matrix(
        (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(values), len(values))
    )
    _, component = connected_components(graph, directed=False)
    keys: list[int | None] = [None] * len(hashes)
    for position, index in enumerate(present):
        keys[index] = int(component[position])
    return group_exact_duplicates(keys)


def mark_duplicates(issues: list[dict[str, Any]], check: str) -> None:
    """Flag every member of each of `check`'s groups except the first path in sorted order."""
    column = GROUP_COLUMNS[check]
    first: dict[int, str] = {}
    for issue in issues:
        if issue[column] is not None:
            first[issue[column]] = min(first.get(issue[column], issue["path"]), issue["path"])
    for issue in issues:
        group = issue[column]
        issue[f"is_{check}_issue"] = group is not None and issue["path"] != first[group]


def mark_conflicts(issues: list[dict[str, Any]]) -> None:
    """Flag all members of any exact or near duplicate group whose labels differ."""
    labels: dict[tuple[str, int], set[tuple[Any, ...]]] = {}
    for issue in issues:
        for column in GROUP_COLUMNS.values():
            if issue[column] is not None:
                key = (column, issue[column])
                labels.setdefault(key, set()).add((issue["label"], tuple(issue["labels"])))
    conflicting = {key for key, found in labels.items() if len(found) > 1}
    for issue in issues:
        issue["is_conflicting_label_issue"] = any(
            (column, issue[column]) in conflicting for column in GROUP_COLUMNS.values()
        )
