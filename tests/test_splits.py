"""Tests of pipeline.splits: group-aware, stratified, seeded train/val/test assignment."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.manifest import TaskInfo
from pipeline.splits import group_keys, group_strata, split_by_group

CLASSES = ("good", "scratch", "hole", "crack", "stain")
DEFECTS = CLASSES[1:]
MULTICLASS = TaskInfo("multiclass", CLASSES, "good")
MULTILABEL = TaskInfo("multilabel", CLASSES, "good")
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
SIDES = ("train", "val", "test")

fraction_sets = st.sampled_from(
    [
        FRACTIONS,
        {"train": 0.8, "val": 0.0, "test": 0.2},
        {"train": 0.5, "val": 0.25, "test": 0.25},
        {"train": 0.34, "val": 0.33, "test": 0.33},
    ]
)
groups = st.one_of(st.none(), st.sampled_from([f"part-{i}" for i in range(10)]))
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _row(index: int, group: str | None, labels: Sequence[str], task: str) -> dict[str, Any]:
    """A minimal manifest row (only the columns the splitter reads)."""
    if task == "multiclass":
        (label,) = labels
        return {"path": f"images/{index:04d}.png", "group": group, "label": label, "labels": []}
    defects = sorted(set(labels) - {"good"})
    return {"path": f"images/{index:04d}.png", "group": group, "label": None, "labels": defects}


@st.composite
def multiclass_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    specs = draw(st.lists(st.tuples(groups, st.sampled_from(CLASSES)), min_size=1, max_size=60))
    return [_row(i, group, [label], "multiclass") for i, (group, label) in enumerate(specs)]


@st.composite
def multilabel_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    label_sets = st.lists(st.sampled_from(DEFECTS), unique=True, max_size=3)
    specs = draw(st.lists(st.tuples(groups, label_sets), min_size=1, max_size=60))
    return [_row(i, group, labels, "multilabel") for i, (group, labels) in enumerate(specs)]


def _check_assignment(
    rows: list[dict[str, Any]], sides: list[str], fractions: dict[str, float]
) -> None:
    """Every row gets one allowed side; a group never straddles sides."""
    assert len(sides) == len(rows)
    assert set(sides) <= {side for side, fraction in fractions.items() if fraction > 0}
    side_of_group: dict[str, set[str]] = defaultdict(set)
    for row, side in zip(rows, sides, strict=True):
        if row["group"] is not None:
            side_of_group[row["group"]].add(side)
    assert all(len(found) == 1 for found in side_of_group.values()), side_of_group


@pytest.mark.parametrize(
    ("strategy", "info"), [(multiclass_rows(), MULTICLASS), (multilabel_rows(), MULTILABEL)]
)
def test_every_row_gets_one_side_and_groups_never_straddle(
    strategy: st.SearchStrategy[list[dict[str, Any]]], info: TaskInfo
) -> None:
    @settings(max_examples=80, deadline=None)
    @given(rows=strategy, fractions=fraction_sets, seed=seeds)
    def check(rows: list[dict[str, Any]], fractions: dict[str, float], seed: int) -> None:
        _check_assignment(rows, split_by_group(rows, fractions, seed, info), fractions)

    check()


@pytest.mark.parametrize(
    ("strategy", "info"), [(multiclass_rows(), MULTICLASS), (multilabel_rows(), MULTILABEL)]
)
def test_same_seed_same_split_whatever_the_row_order(
    strategy: st.SearchStrategy[list[dict[str, Any]]], info: TaskInfo
) -> None:
    @settings(max_examples=60, deadline=None)
    @given(rows=strategy, seed=seeds, shuffle_seed=st.integers(0, 1000))
    def check(rows: list[dict[str, Any]], seed: int, shuffle_seed: int) -> None:
        sides = split_by_group(rows, FRACTIONS, seed, info)
        assert split_by_group(rows, FRACTIONS, seed, info) == sides
        # The side of an image depends on the data and the seed, not on the manifest's order.
        shuffled = random.Random(shuffle_seed).sample(rows, len(rows))
        again = split_by_group(shuffled, FRACTIONS, seed, info)
        by_path = {row["path"]: side for row, side in zip(rows, sides, strict=True)}
        assert again == [by_path[row["path"]] for row in shuffled]

    check()


@settings(max_examples=60, deadline=None)
@given(
    per_class=st.lists(st.integers(0, 6), min_size=len(CLASSES), max_size=len(CLASSES)),
    sizes=st.lists(st.integers(1, 5), min_size=30, max_size=30),
    fractions=fraction_sets,
    seed=seeds,
)
def test_a_class_with_three_groups_reaches_every_side(
    per_class: list[int], sizes: list[int], fractions: dict[str, float], seed: int
) -> None:
    rows: list[dict[str, Any]] = []
    for name, count in zip(CLASSES, per_class, strict=True):
        for g in range(count):
            for _ in range(sizes[len(rows) % len(sizes)]):
                rows.append(_row(len(rows), f"{name}-{g}", [name], "multiclass"))
    if not rows:
        return
    sides = split_by_group(rows, fractions, seed, MULTICLASS)
    _check_assignment(rows, sides, fractions)
    wanted = {side for side, fraction in fractions.items() if fraction > 0}
    for name, count in zip(CLASSES, per_class, strict=True):
        if count >= 3:
            assert {s for r, s in zip(rows, sides, strict=True) if r["label"] == name} == wanted


def test_rows_without_a_group_are_their_own_groups() -> None:
    rows = [_row(i, None, ["good"], "multiclass") for i in range(20)]
    keys = group_keys(rows)
    assert len(set(keys)) == 20
    # 20 one-image groups of one class are shared out exactly by the fractions.
    assert Counter(split_by_group(rows, FRACTIONS, 3, MULTICLASS)) == {
        "train": 14,
        "val": 3,
        "test": 3,
    }


def test_one_group_stays_together_even_when_it_is_most_of_the_data() -> None:
    rows = [_row(i, "big", ["good"], "multiclass") for i in range(15)]
    rows += [_row(15 + i, None, ["good"], "multiclass") for i in range(5)]
    sides = split_by_group(rows, FRACTIONS, 0, MULTICLASS)
    assert len(set(sides[:15])) == 1


def test_group_keys_keep_named_groups_and_give_each_ungrouped_row_its_own() -> None:
    rows = [
        _row(0, "part-1", ["good"], "multiclass"),
        _row(1, None, ["good"], "multiclass"),
        _row(2, "part-1", ["hole"], "multiclass"),
        _row(3, None, ["good"], "multiclass"),
    ]
    keys = group_keys(rows)
    assert keys[0] == keys[2] == "part-1"
    assert len({keys[1], keys[3], keys[0]}) == 3


def test_row_classes() -> None:
    assert MULTICLASS.row_classes(_row(0, None, ["hole"], "multiclass")) == ["hole"]
    assert MULTICLASS.row_classes(_row(0, None, ["good"], "multiclass")) == ["good"]
    assert MULTILABEL.row_classes(_row(0, None, ["hole", "crack"], "multilabel")) == [
        "crack",
        "hole",
    ]
    assert MULTILABEL.row_classes(_row(0, None, [], "multilabel")) == ["good"]


def test_group_strata_majority_then_rarest() -> None:
    labels = {
        "a": ["scratch", "scratch", "hole"],  # majority: scratch
        "b": ["scratch", "hole"],  # tie: hole is rarer overall (2 vs 4)
        "c": ["scratch"],
    }
    rows = [
        _row(i, group, [label], "multiclass")
        for i, (group, label) in enumerate((g, x) for g, xs in labels.items() for x in xs)
    ]
    assert group_strata(rows, group_keys(rows), MULTICLASS) == {
        "a": "scratch",
        "b": "hole",
        "c": "scratch",
    }
    multilabel = [
        _row(0, "a", ["scratch", "stain"], "multilabel"),  # stain: rarest defect overall
        _row(1, "b", ["scratch"], "multilabel"),
        _row(2, "b", ["scratch", "hole"], "multilabel"),
        _row(3, "c", [], "multilabel"),
        _row(4, "d", ["hole"], "multilabel"),
    ]
    assert group_strata(multilabel, group_keys(multilabel), MULTILABEL) == {
        "a": "stain",
        "b": "hole",
        "c": "good",
        "d": "hole",
    }


def test_the_seed_changes_the_split() -> None:
    rows = [_row(i, f"part-{i // 2}", ["good"], "multiclass") for i in range(60)]
    splits = {tuple(split_by_group(rows, FRACTIONS, seed, MULTICLASS)) for seed in range(5)}
    assert len(splits) > 1


def _constructed(task: str, seed: int, co_occurrence: float = 0.0) -> list[dict[str, Any]]:
    """300 groups of 1-4 images; class weights 50/20/15/10/5 % (stain is rare).

    Multilabel: a defective group carries a second defect with probability `co_occurrence`.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    weights = [0.5, 0.2, 0.15, 0.1, 0.05]
    for g in range(300):
        name = CLASSES[rng.choice(len(CLASSES), p=weights)]
        labels = [name]
        if name != "good" and rng.random() < co_occurrence:
            labels.append(DEFECTS[int(rng.integers(len(DEFECTS)))])
        for _ in range(int(rng.integers(1, 5))):
            rows.append(_row(len(rows), f"part-{g}", labels, task))
    return rows


def _shares(rows: Sequence[dict[str, Any]], info: TaskInfo) -> dict[str, float]:
    counts = Counter(name for row in rows for name in info.row_classes(row))
    return {name: counts[name] / len(rows) for name in info.classes}


def _worst_share_gap(rows: list[dict[str, Any]], sides: list[str], info: TaskInfo) -> float:
    """Largest |share of a class on a side - its share overall|; every class on every side."""
    whole = _shares(rows, info)
    worst = 0.0
    for side in SIDES:
        members = [row for row, s in zip(rows, sides, strict=True) if s == side]
        assert abs(len(members) / len(rows) - FRACTIONS[side]) < 0.03, side
        shares = _shares(members, info)
        assert all(shares[name] > 0 for name in CLASSES), (side, shares)
        worst = max(worst, *(abs(shares[name] - whole[name]) for name in CLASSES))
    return worst


@pytest.mark.parametrize("info", [MULTICLASS, MULTILABEL], ids=["multiclass", "multilabel"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_class_shares_track_the_whole(info: TaskInfo, seed: int) -> None:
    rows = _constructed(info.task, seed)
    assert _shares(rows, info)["stain"] < 0.1  # the rare class really is rare
    sides = split_by_group(rows, FRACTIONS, seed, info)
    _check_assignment(rows, sides, FRACTIONS)
    assert _worst_share_gap(rows, sides, info) < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_with_co_occurring_defects_reaches_every_side(seed: int) -> None:
    rows = _constructed("multilabel", seed, co_occurrence=0.3)
    sides = split_by_group(rows, FRACTIONS, seed, MULTILABEL)
    _check_assignment(rows, sides, FRACTIONS)
    _worst_share_gap(rows, sides, MULTILABEL)


@pytest.mark.xfail(
    strict=True,
    reason="multilabel groups are stratified by their rarest defect only, so a co-occurring "
    "second defect is not balanced and its share on val/test drifts by up to ~7 points",
)
def test_multilabel_co_occurring_defect_shares_track_the_whole() -> None:
    gaps = []
    for seed in range(10):
        rows = _constructed("multilabel", seed, co_occurrence=0.3)
        gaps.append(
            _worst_share_gap(rows, split_by_group(rows, FRACTIONS, seed, MULTILABEL), MULTILABEL)
        )
    assert max(gaps) < 0.05, gaps
