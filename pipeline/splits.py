"""Group-aware, stratified assignment of images to train/val/test.

Every group (a physical part photographed several times) lands on exactly one side, so the
test side only holds parts never seen in training. Groups are stratified by one class each
(the group's majority class for multiclass, its rarest defect for multilabel) and handed out
so that each side's share of every class tracks the requested fractions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.manifest import TaskInfo


def group_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The group of each row; an image without a group is its own group."""
    return [row["group"] if row["group"] is not None else f"path:{row['path']}" for row in rows]


def group_strata(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], info: TaskInfo
) -> dict[str, str]:
    """One class per group: its most frequent class, ties and multilabel going to the rarest."""
    overall = Counter(name for row in rows for name in info.row_classes(row))
    per_group: dict[str, Counter[str]] = {}
    for row, key in zip(rows, keys, strict=True):
        per_group.setdefault(key, Counter()).update(info.row_classes(row))
    strata = {}
    for key, counts in per_group.items():
        if info.task == "multiclass":
            strata[key] = min(counts, key=lambda name: (-counts[name], overall[name], name))
        else:
            strata[key] = min(counts, key=lambda name: (overall[name], name))
    return strata


def _assign_stratum(
    groups: list[str],
    sizes: Mapping[str, int],
    fractions: Mapping[str, float],
    rng: np.random.Generator,
) -> dict[str, str]:
    """Hand out one stratum's groups, each to the side that is least filled relative to its target.

    Ties go to the side with the larger fraction, so the first groups seed every side.
    """
    order = [groups[i] for i in rng.permutation(len(groups))]
    total = sum(sizes[group] for group in groups)
    filled = dict.fromkeys(fractions, 0)
    sides = [side for side, fraction in fractions.items() if fraction > 0]
    assigned = {}
    for group in order:
        side = min(sides, key=lambda s: (filled[s] / (fractions[s] * total), -fractions[s]))
        assigned[group] = side
        filled[side] += sizes[group]
    return assigned


def split_by_group(
    rows: Sequence[Mapping[str, Any]], fractions: Mapping[str, float], seed: int, info: TaskInfo
) -> list[str]:
    """Side name for every row; all rows of a group get the same side. Deterministic in seed."""
    keys = group_keys(rows)
    sizes = Counter(keys)
    strata = group_strata(rows, keys, info)
    rng = np.random.default_rng(seed)
    side_of: dict[str, str] = {}
    for stratum in sorted(set(strata.values())):
        groups = sorted(key for key, name in strata.items() if name == stratum)
        side_of.update(_assign_stratum(groups, sizes, fractions, rng))
    return [side_of[key] for key in keys]
