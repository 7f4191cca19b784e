"""Tests of pipeline.dedup: exact groups, near-duplicate pairs and groups, and the marks."""

from __future__ import annotations

from collections import Counter
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest
import scipy.fft
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import dedup
from pipeline.dedup import (
    band_limited,
    group_exact_duplicates,
    group_near_duplicates,
    mark_conflicts,
    mark_duplicates,
    near_duplicate_pairs,
    patch_correlation,
    spectra_correlation,
    texture_agrees,
    texture_levels,
    texture_spectra,
)

# A small alphabet so that repeated keys are common.
KEYS = st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e"])), max_size=30)


def test_hand_worked_example() -> None:
    keys = ["x", None, "y", "x", None, "z", "y", "x"]
    assert group_exact_duplicates(keys) == [0, None, 1, 0, None, None, 1, 0]


def test_empty_and_all_unique() -> None:
    assert group_exact_duplicates([]) == []
    assert group_exact_duplicates(["a", "b", None, "c"]) == [None, None, None, None]


def test_first_appearance_not_key_order_sets_the_numbers() -> None:
    # "z" repeats first, so it gets 0 although "a" sorts first; the singleton "m" takes no number.
    assert group_exact_duplicates(["m", "z", "a", "z", "a"]) == [None, 0, 1, 0, 1]


@settings(max_examples=200, deadline=None)
@given(KEYS)
def test_ids_are_equal_iff_keys_are_equal_and_repeat(keys: list[str | None]) -> None:
    ids = group_exact_duplicates(keys)
    assert len(ids) == len(keys)
    counts = Counter(key for key in keys if key is not None)
    for i, key in enumerate(keys):
        assert (ids[i] is None) == (key is None or counts[key] == 1)
    for i in range(len(keys)):
        for j in range(len(keys)):
            if ids[i] is not None and ids[j] is not None:
                assert (ids[i] == ids[j]) == (keys[i] == keys[j])


@settings(max_examples=200, deadline=None)
@given(KEYS)
def test_none_is_never_grouped(keys: list[str | None]) -> None:
    ids = group_exact_duplicates(keys)
    assert all(ids[i] is None for i, key in enumerate(keys) if key is None)


@settings(max_examples=200, deadline=None)
@given(KEYS)
def test_ids_are_numbered_from_zero_in_first_appearance_order(keys: list[str | None]) -> None:
    ids = [i for i in group_exact_duplicates(keys) if i is not None]
    first_appearances = list(dict.fromkeys(ids))
    assert first_appearances == list(range(len(first_appearances)))
    repeated = {key for key, n in Counter(k for k in keys if k is not None).items() if n > 1}
    assert len(first_appearances) == len(repeated)


# --- near_duplicate_pairs ----------------------------------------------------------------------

U64 = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 1, 2**63, 2**63 - 1, 2**64 - 1, 0xFFFF, 0xFFFF << 48]),
)


@st.composite
def planted_hashes(draw: st.DrawFn) -> list[int]:
    """Random 64-bit hashes plus copies of some of them with a few chosen bits flipped.

    Hypothesis picks the flipped bits, so they may all fall in one block (the hard case for
    multi-index hashing) or spread over every block.
    """
    hashes = draw(st.lists(U64, min_size=0, max_size=25))
    if hashes:
        for _ in range(draw(st.integers(0, 15))):
            source = draw(st.sampled_from(hashes))
            bits = draw(st.sets(st.integers(0, 63), max_size=14))
            hashes.append(source ^ sum(1 << bit for bit in bits))
    return draw(st.permutations(hashes))


def brute_force_pairs(hashes: list[int], max_distance: int) -> list[tuple[int, int]]:
    return [
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if (hashes[i] ^ hashes[j]).bit_count() <= max_distance
    ]


def _as_list(pairs: np.ndarray) -> list[tuple[int, int]]:
    assert pairs.ndim == 2
    assert pairs.shape[1] == 2
    assert np.issubdtype(pairs.dtype, np.integer)
    return [(int(i), int(j)) for i, j in pairs]


@settings(max_examples=150, deadline=None)
@given(planted_hashes(), st.integers(0, 12))
def test_near_duplicate_pairs_are_exactly_the_brute_force_pairs(
    hashes: list[int], max_distance: int
) -> None:
    pairs = _as_list(near_duplicate_pairs(np.array(hashes, dtype=np.uint64), max_distance))
    assert pairs == brute_force_pairs(hashes, max_distance)  # sorted, unique, i < j


@settings(max_examples=40, deadline=None)
@given(planted_hashes(), st.integers(0, 12), st.integers(1, 4))
def test_near_duplicate_pairs_do_not_depend_on_the_query_chunk(
    hashes: list[int], max_distance: int, chunk: int
) -> None:
    # Queries are processed in chunks to bound memory; pairs across chunks must not be lost.
    with patch.object(dedup, "_CHUNK", chunk):
        pairs = _as_list(near_duplicate_pairs(np.array(hashes, dtype=np.uint64), max_distance))
    assert pairs == brute_force_pairs(hashes, max_distance)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from([0, 1, 3, 2**40, 2**64 - 1, 0xFF00FF]), max_size=40),
    st.integers(0, 12),
)
def test_near_duplicate_pairs_of_many_repeated_hashes_are_the_brute_force_pairs(
    hashes: list[int], max_distance: int
) -> None:
    # images that look alike share hash values: every row pair of a shared value is a pair
    pairs = _as_list(near_duplicate_pairs(np.array(hashes, dtype=np.uint64), max_distance))
    assert pairs == brute_force_pairs(hashes, max_distance)


def test_near_duplicate_pairs_hand_worked() -> None:
    a = 0x0123_4567_89AB_CDEF
    hashes = [a, a ^ 0b1, a ^ (1 << 63) ^ (1 << 40), 0xFFFF_FFFF_FFFF_FFFF, a]
    found = near_duplicate_pairs(np.array(hashes, dtype=np.uint64), 2)
    assert _as_list(found) == [(0, 1), (0, 2), (0, 4), (1, 4), (2, 4)]
    assert _as_list(near_duplicate_pairs(np.array(hashes, dtype=np.uint64), 0)) == [(0, 4)]
    assert _as_list(near_duplicate_pairs(np.array([], dtype=np.uint64), 4)) == []
    assert _as_list(near_duplicate_pairs(np.array([a], dtype=np.uint64), 4)) == []


def test_near_duplicate_pairs_find_planted_copies_among_many() -> None:
    # Enough hashes that each block table has collisions and several query chunks are needed.
    rng = np.random.default_rng(0)
    n, copies, max_distance = 40_000, 400, 8
    hashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    planted = set()
    for index in range(copies):
        flipped = rng.choice(64, size=int(rng.integers(0, max_distance + 1)), replace=False)
        mask = sum(1 << int(bit) for bit in flipped)
        hashes[n - copies + index] = int(hashes[index]) ^ mask
        planted.add((index, n - copies + index))
    found = set(_as_list(near_duplicate_pairs(hashes, max_distance)))
    assert planted <= found
    for i, j in found:  # nothing beyond the distance
        assert int(np.bitwise_count(hashes[i] ^ hashes[j])) <= max_distance


# --- group_near_duplicates -------------------------------------------------------------------


def brute_force_components(hashes: list[int | None], max_distance: int) -> list[int | None]:
    """Smallest row index of each row's connected component; None for rows with no hash."""
    present = [i for i, h in enumerate(hashes) if h is not None]
    root = {i: i for i in present}

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    for a in present:
        for b in present:
            if a < b and (hashes[a] ^ hashes[b]).bit_count() <= max_distance:
                ra, rb = find(a), find(b)
                root[max(ra, rb)] = min(ra, rb)
    return [find(i) if i in root else None for i in range(len(hashes))]


@st.composite
def hashes_with_gaps(draw: st.DrawFn) -> list[int | None]:
    hashes: list[int | None] = list(draw(planted_hashes()))
    for _ in range(draw(st.integers(0, 5))):
        hashes.insert(draw(st.integers(0, len(hashes))), None)
    return hashes


@settings(max_examples=150, deadline=None)
@given(hashes_with_gaps(), st.integers(0, 12))
def test_near_groups_are_the_connected_components(
    hashes: list[int | None], max_distance: int
) -> None:
    ids = group_near_duplicates(hashes, max_distance)
    component = brute_force_components(hashes, max_distance)
    assert len(ids) == len(hashes)
    size = Counter(c for c in component if c is not None)
    for i in range(len(hashes)):
        # None hashes are never grouped; a row alone in its component is not a group either.
        assert (ids[i] is None) == (component[i] is None or size[component[i]] == 1)
        for j in range(len(hashes)):
            if ids[i] is not None and ids[j] is not None:
                assert (ids[i] == ids[j]) == (component[i] == component[j])
    numbered = [i for i in ids if i is not None]
    assert list(dict.fromkeys(numbered)) == list(range(len(set(numbered))))


def test_chains_join_rows_further_apart_than_the_distance() -> None:
    a = 0b0
    b = 0b11  # 2 bits from a
    c = 0b1111  # 2 bits from b, 4 from a
    far = 0xFFFF_0000_0000_0000
    hashes: list[int | None] = [far, c, None, a, 2**64 - 1 - far, b, None]
    assert group_near_duplicates(hashes, 2) == [None, 0, None, 0, None, 0, None]
    # At distance 1 nothing is connected.
    assert group_near_duplicates(hashes, 1) == [None] * len(hashes)


def test_near_groups_are_numbered_by_first_appearance() -> None:
    x, y = 0xAAAA_AAAA_AAAA_AAAA, 0x5555_5555_5555_5555
    hashes: list[int | None] = [y ^ 1, x, x ^ 2, y, None, x]
    assert group_near_duplicates(hashes, 1) == [0, 1, 1, 0, None, 1]


def test_near_groups_of_nothing() -> None:
    assert group_near_duplicates([], 4) == []
    assert group_near_duplicates([None, None], 4) == [None, None]
    assert group_near_duplicates([7], 4) == [None]


def test_confirm_sees_row_indices_and_its_refusals_cut_the_group() -> None:
    x = 0xAAAA_AAAA_AAAA_AAAA
    hashes: list[int | None] = [x, None, x ^ 1, x ^ 3, None, x]
    seen: list[tuple[int, int]] = []

    def confirm(pairs: np.ndarray) -> np.ndarray:
        seen.extend(map(tuple, pairs.tolist()))
        return np.array([3 not in pair for pair in pairs.tolist()])

    assert group_near_duplicates(hashes, 2, confirm) == [0, None, 0, None, None, 0]
    # every hash-near pair, named by row (rows without a hash are skipped, not renumbered)
    assert sorted(seen) == [(0, 2), (0, 3), (0, 5), (2, 3), (2, 5), (3, 5)]
    assert group_near_duplicates(hashes, 2) == [0, None, 0, 0, None, 0]


# --- patch_correlation -----------------------------------------------------------------------


def surface(seed: int, side: int = 64) -> np.ndarray:
    """A part's surface: a lighting gradient (what unrelated parts share) plus fine grain."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 180, side)[None, :] + np.linspace(0, 30, side)[:, None]
    grain = rng.normal(0, 12, (side, side))
    grain = (grain + np.roll(grain, 1, 0) + np.roll(grain, 1, 1)) / 3  # a little spatial scale
    return np.clip(ramp + grain, 0, 255).astype(np.uint8)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_median_of_rows_is_numpys(rows: int, columns: int, seed: int) -> None:
    values = np.random.default_rng(seed).normal(0, 10, (rows, columns)).astype(np.float32)
    values[:, ::3] = values[:, :1]  # ties
    assert np.allclose(dedup._median(values), np.median(values, axis=1), rtol=1e-6, atol=1e-6)


def test_tanh_is_numpys_to_float32_precision_over_the_whole_range() -> None:
    x = np.concatenate(
        [np.linspace(-20, 20, 100_001), [0.0, 1e-30, -1e-30, 44.0, -44.0, 1e6, -1e6, 3e38, -3e38]]
    ).astype(np.float32)
    found = dedup._tanh(x)
    assert found.dtype == np.float32
    assert np.abs(found - np.tanh(x)).max() <= 2.5e-7
    assert found[-4:].tolist() == [1.0, -1.0, 1.0, -1.0]  # saturates, no inf or nan


def test_identical_and_relit_patches_correlate_fully() -> None:
    a = surface(0)
    relit = np.clip(a.astype(float) * 0.8 + 20, 0, 255).astype(np.uint8)
    patches = np.stack([a, a, relit, np.full_like(a, 128)])
    found = patch_correlation(patches, np.array([[0, 1], [0, 2], [1, 0], [0, 3], [3, 3]]))
    assert found[0] == pytest.approx(1.0, abs=1e-4)
    assert found[1] > 0.95  # brightness and contrast do not matter
    assert found[2] == pytest.approx(found[0])  # symmetric
    # a flat patch has no texture to agree with, not even its own
    assert found[3] == found[4] == 0.0


def test_shifts_count_up_to_max_shift_only() -> None:
    a = surface(1)
    moved = np.roll(a, (3, -2), axis=(0, 1))
    far = np.roll(a, (9, 0), axis=(0, 1))
    patches = np.stack([a, moved, far])
    pairs = np.array([[0, 1], [0, 2]])
    near_shift, far_shift = patch_correlation(patches, pairs, max_shift=4)
    assert near_shift > 0.8
    assert far_shift < 0.2  # the same surface, but further off than allowed
    assert patch_correlation(patches, pairs[1:], max_shift=9)[0] > 0.7


def test_unrelated_surfaces_with_the_same_lighting_do_not_correlate() -> None:
    patches = np.stack([surface(seed) for seed in range(6)])
    pairs = np.array([(i, j) for i in range(6) for j in range(i + 1, 6)])
    assert patch_correlation(patches, pairs).max() < 0.2


@pytest.mark.parametrize("max_shift", [0, 4, 9])
def test_correlation_peak_is_the_inverse_fft_surfaces_peak_near_zero_shift(max_shift: int) -> None:
    """The few shifts evaluated directly give what a whole inverse FFT gives there."""
    patches = np.stack([surface(seed % 4) for seed in range(8)])
    patches[4:] = np.roll(patches[:4], (3, -2), axis=(1, 2))  # shifted copies: peak off zero
    spectra = texture_spectra(patches)
    pairs = np.array([(i, j) for i in range(8) for j in range(8)])
    surfaces = scipy.fft.irfft2(spectra[pairs[:, 0]] * np.conj(spectra[pairs[:, 1]]), s=(64, 64))
    near = np.r_[0 : max_shift + 1, 64 - max_shift : 64]
    expected = surfaces[:, near][:, :, near].max(axis=(1, 2))
    found = spectra_correlation(spectra, pairs, max_shift)
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_many_pairs_are_correlated_in_steps_like_one_at_a_time() -> None:
    patches = np.stack([surface(seed % 5) for seed in range(40)])
    pairs = np.array([(i, j) for i in range(40) for j in range(i + 1, 40)])  # 780 > a step
    spectra = texture_spectra(patches)
    with patch.object(dedup, "_VALUES_PER_STEP", 100 * 64 * 33):  # 100 pairs a step
        stepped = spectra_correlation(spectra, pairs, threads=2)
    alone = np.concatenate([spectra_correlation(spectra, pair[None]) for pair in pairs])
    np.testing.assert_allclose(stepped, alone, atol=1e-5)
    assert patch_correlation(patches, np.empty((0, 2), dtype=np.int64)).shape == (0,)


def test_band_limited_spectra_correlate_as_the_whole_grid_with_other_frequencies_zeroed() -> None:
    patches = np.stack([surface(seed % 3) for seed in range(6)])
    patches[3:] = np.roll(patches[:3], (2, -3), axis=(1, 2))
    spectra = texture_spectra(patches)
    limited = band_limited(spectra, 16)
    assert limited.shape == (6, 33, 17)
    zeroed = np.zeros_like(spectra)
    rows = np.r_[0:17, 48:64]
    zeroed[:, rows, :17] = spectra[:, rows, :17]
    zeroed /= np.sqrt((np.abs(zeroed) ** 2 * np.r_[1, [2] * 31, 1]).sum(axis=(1, 2)) / 64**2)[
        :, None, None
    ]
    pairs = np.array([(i, j) for i in range(6) for j in range(6)])
    found = spectra_correlation(limited, pairs, side=64)
    np.testing.assert_allclose(found, spectra_correlation(zeroed, pairs), atol=1e-5)
    assert found[0] == pytest.approx(1.0, abs=1e-4)  # each band has unit energy
    assert found[3] > 0.9  # a shifted copy (pair (0, 3))


def test_texture_agrees_where_the_correlation_reaches_the_threshold() -> None:
    patches = np.stack([surface(seed % 5) for seed in range(10)])
    patches[5:] = np.roll(patches[:5], (1, 3), axis=(1, 2))
    patches[7] = np.clip(patches[7] * 0.6 + surface(9) * 0.4, 0, 255)  # a weaker match of 2
    spectra = texture_spectra(patches)
    pairs = np.array([(i, j) for i in range(10) for j in range(i + 1, 10)])
    full = spectra_correlation(spectra, pairs)
    for threshold in (0.3, 0.5, 0.9):
        agrees = texture_agrees(texture_levels(spectra), pairs, threshold, threads=2)
        np.testing.assert_array_equal(agrees, full >= threshold)
    assert 0 < (full >= 0.5).sum() < len(pairs)


@pytest.mark.parametrize("refused_at", ["quarter", "half"])
def test_texture_agreeing_only_in_fine_detail_is_refused_by_a_coarse_test(refused_at: str) -> None:
    """The coarse tests do decide: equal fine texture over different coarser texture
    correlates above the threshold in full but is refused at a quarter of the resolution
    (phases scrambled up to 16 cycles per patch), or passes there and is refused at half
    (scrambled from 9 to 16 cycles)."""
    rng = np.random.default_rng(0)
    spectra = texture_spectra(np.stack([surface(1), surface(2)]))
    spectra[1] = spectra[0]
    scrambled = np.zeros(spectra.shape[1:], dtype=bool)
    scrambled[np.ix_(np.r_[0:17, 48:64], np.arange(17))] = True
    if refused_at == "half":
        scrambled[np.ix_(np.r_[0:9, 56:64], np.arange(9))] = False
    spectra[1][scrambled] *= np.exp(2j * np.pi * rng.random(scrambled.sum()))
    pair, threshold = np.array([[0, 1]]), 0.6
    quarter = spectra_correlation(texture_levels(spectra)[0], pair, side=64)[0]
    assert spectra_correlation(spectra, pair)[0] > threshold
    assert (quarter >= 0.7 * threshold) == (refused_at == "half")
    assert not texture_agrees(texture_levels(spectra), pair, threshold)[0]


# --- mark_duplicates / mark_conflicts --------------------------------------------------------


def _issue(path: str, exact: int | None = None, near: int | None = None, label: str = "good"):
    labels = [] if label == "good" else sorted(label.split(";"))
    return {
        "path": path,
        "label": label,
        "labels": labels,
        "exact_dup_group": exact,
        "near_dup_group": near,
    }


def test_mark_duplicates_keeps_the_first_sorted_path_of_each_group() -> None:
    issues = [
        _issue("b/2.png", exact=0),
        _issue("a/9.png", exact=1),
        _issue("b/10.png", exact=0),  # "b/10" sorts before "b/2": kept, though listed later
        _issue("c.png"),
        _issue("a/1.png", exact=1),
        _issue("b/3.png", exact=0),
    ]
    mark_duplicates(issues, "exact_duplicate")
    flagged = {issue["path"]: issue["is_exact_duplicate_issue"] for issue in issues}
    assert flagged == {
        "b/2.png": True,
        "a/9.png": True,
        "b/10.png": False,
        "c.png": False,
        "a/1.png": False,
        "b/3.png": True,
    }


def test_mark_duplicates_reads_only_its_own_column() -> None:
    issues = [_issue("z.png", exact=0, near=0), _issue("a.png", exact=0), _issue("m.png", near=0)]
    mark_duplicates(issues, "near_duplicate")
    assert [issue["is_near_duplicate_issue"] for issue in issues] == [True, False, False]
    assert all("is_exact_duplicate_issue" not in issue for issue in issues)


def _conflicts(issues: list[dict[str, Any]]) -> list[bool]:
    mark_conflicts(issues)
    return [issue["is_conflicting_label_issue"] for issue in issues]


def test_same_labels_in_a_group_are_no_conflict() -> None:
    issues = [_issue("a", exact=0, label="hole"), _issue("b", exact=0, label="hole")]
    issues += [_issue("c", near=0, label="good"), _issue("d", near=0, label="good")]
    assert _conflicts(issues) == [False] * 4


def test_different_labels_in_an_exact_group_flag_every_member() -> None:
    issues = [
        _issue("a", exact=0, label="hole"),
        _issue("b", exact=0, label="hole"),
        _issue("c", exact=0, label="crack"),
        _issue("d", exact=1, label="crack"),
        _issue("e", exact=1, label="crack"),
        _issue("f", label="stain"),
    ]
    assert _conflicts(issues) == [True, True, True, False, False, False]


def test_different_labels_in_a_near_group_flag_every_member() -> None:
    issues = [
        _issue("a", exact=0, near=0, label="hole"),
        _issue("b", exact=0, near=0, label="hole"),  # agrees with its exact copy ...
        _issue("c", near=0, label="good"),  # ... but the near group disagrees
        _issue("d", near=1, label="good"),
        _issue("e", near=1, label="good"),
    ]
    assert _conflicts(issues) == [True, True, True, False, False]


def test_exact_and_near_groups_with_the_same_id_are_different_groups() -> None:
    issues = [
        _issue("a", exact=0, label="hole"),
        _issue("b", exact=0, label="hole"),
        _issue("c", near=0, label="crack"),
        _issue("d", near=0, label="crack"),
    ]
    assert _conflicts(issues) == [False] * 4


def test_multilabel_conflict_is_a_different_label_set() -> None:
    issues = [_issue("a", exact=0, label="hole;scratch"), _issue("b", exact=0, label="hole")]
    issues += [_issue("c", near=0, label="scratch;hole"), _issue("d", near=0, label="hole;scratch")]
    for issue in issues:
        issue["label"] = None  # multilabel rows carry only `labels`
    assert _conflicts(issues) == [True, True, False, False]
