"""Tests of pipeline.dedup.group_exact_duplicates."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup import group_exact_duplicates

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
