"""Tests of pipeline.splits: linked groups, group-aware iterative stratification, leak check."""

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
from pipeline.splits import SplitError, find_leaks, link_groups, split_groups

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


def split_by_group(
    rows: list[dict[str, Any]],
    fractions: dict[str, float],
    seed: int,
    info: TaskInfo,
    policy: str = "train_only",
) -> list[str]:
    sides, _ = split_groups(rows, link_groups(rows), fractions, seed, info, policy)
    return sides


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
    keys = link_groups(rows)
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
    keys = link_groups(rows)
    assert keys[0] == keys[2]
    assert len({keys[1], keys[3], keys[0]}) == 3


def test_row_classes() -> None:
    assert MULTICLASS.row_classes(_row(0, None, ["hole"], "multiclass")) == ["hole"]
    assert MULTICLASS.row_classes(_row(0, None, ["good"], "multiclass")) == ["good"]
    assert MULTILABEL.row_classes(_row(0, None, ["hole", "crack"], "multilabel")) == [
        "crack",
        "hole",
    ]
    assert MULTILABEL.row_classes(_row(0, None, [], "multilabel")) == ["good"]


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


def test_multilabel_co_occurring_defect_shares_track_the_whole() -> None:
    gaps = []
    for seed in range(10):
        rows = _constructed("multilabel", seed, co_occurrence=0.3)
        gaps.append(
            _worst_share_gap(rows, split_by_group(rows, FRACTIONS, seed, MULTILABEL), MULTILABEL)
        )
    assert max(gaps) < 0.05, gaps


# --- linked groups, leaks, too few groups, folds ----------------------------------------------


def _issue(
    row: dict[str, Any], exact: int | None = None, near: int | None = None
) -> dict[str, Any]:
    return {**row, "exact_dup_group": exact, "near_dup_group": near}


def test_duplicate_groups_join_parts_even_through_a_removed_image() -> None:
    rows = [_row(i, f"part-{i}", ["good"], "multiclass") for i in range(5)]
    removed = _row(9, "part-9", ["good"], "multiclass")  # in the issues manifest only
    issues = [
        _issue(rows[0], exact=0),
        _issue(rows[1], exact=0),  # exact copy of row 0
        _issue(rows[2], near=4),
        _issue(removed, near=4),  # near copy of row 2, and ...
        _issue(removed, exact=7),  # (one image appears once; a second link for the test)
        _issue(rows[3], exact=7),  # ... exact copy of the removed image: row 3 joins row 2
        _issue(rows[4]),
    ]
    keys = link_groups(rows, issues)
    assert keys[0] == keys[1] and keys[2] == keys[3]
    assert len({keys[0], keys[2], keys[4]}) == 3


def test_find_leaks_names_each_group_found_on_two_sides() -> None:
    rows = [_row(i, f"part-{i // 2}", ["good"], "multiclass") for i in range(4)]
    issues = [_issue(rows[0]), _issue(rows[1]), _issue(rows[2], near=1), _issue(rows[3], near=1)]
    assert find_leaks(rows, ["train", "train", "test", "test"], issues) == []
    leaks = find_leaks(rows, ["train", "val", "test", "train"], issues)
    assert leaks == [
        "group 'part-0' is on train, val",
        "group 'part-1' is on test, train",
        "near_dup_group 1 is on test, train",
    ]


@settings(max_examples=60, deadline=None)
@given(
    rows=multiclass_rows(),
    links=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 4)), max_size=30),
    seed=seeds,
)
def test_a_split_never_leaks_a_group_or_duplicate(
    rows: list[dict[str, Any]], links: list[tuple[int, int]], seed: int
) -> None:
    near = {index % len(rows): group for index, group in links}
    issues = [_issue(row, near=near.get(i)) for i, row in enumerate(rows)]
    sides, _ = split_groups(
        rows, link_groups(rows, issues), FRACTIONS, seed, MULTICLASS, "train_only"
    )
    assert find_leaks(rows, sides, issues) == []


def test_a_class_with_too_few_groups_is_an_error_naming_it() -> None:
    rows = [_row(i, f"part-{i}", ["good"], "multiclass") for i in range(30)]
    rows += [_row(30 + i, "stain-part", ["stain"], "multiclass") for i in range(4)]
    rows += [_row(40, "stain-other", ["stain"], "multiclass")]
    with pytest.raises(SplitError, match=r"class 'stain' has 2 group\(s\).*at least 3"):
        split_by_group(rows, FRACTIONS, 0, MULTICLASS, policy="error")


def test_train_only_policy_keeps_a_rare_class_in_train_and_says_so() -> None:
    rows = [_row(i, f"part-{i}", ["good"], "multiclass") for i in range(30)]
    rows += [_row(30 + i, "stain-part", ["stain"], "multiclass") for i in range(4)]
    rows += [_row(40, "stain-other", ["stain"], "multiclass")]
    sides, missing = split_groups(rows, link_groups(rows), FRACTIONS, 0, MULTICLASS, "train_only")
    assert {s for r, s in zip(rows, sides, strict=True) if r["label"] == "stain"} == {"train"}
    assert missing == {"stain": {"groups": 2, "missing_from": ["val", "test"]}}
    assert {s for r, s in zip(rows, sides, strict=True) if r["label"] == "good"} == set(SIDES)


@pytest.mark.parametrize("info", [MULTICLASS, MULTILABEL], ids=["multiclass", "multilabel"])
def test_folds_each_hold_every_class_in_proportion(info: TaskInfo) -> None:
    rows = _constructed(info.task, 4, co_occurrence=0.3 if info.task == "multilabel" else 0.0)
    fractions = {"train": 0.0, "test": 0.2, **{f"fold_{k}": 0.16 for k in range(5)}}
    sides, missing = split_groups(rows, link_groups(rows), fractions, 4, info, "error")
    assert missing == {}
    assert set(sides) == set(fractions) - {"train"}
    whole = _shares(rows, info)
    for part in set(sides):
        members = [row for row, side in zip(rows, sides, strict=True) if side == part]
        shares = _shares(members, info)
        assert all(shares[name] > 0 for name in CLASSES), (part, shares)
        assert max(abs(shares[n] - whole[n]) for n in CLASSES) < 0.06, (part, shares)
