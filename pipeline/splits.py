"""Leakage-proof, stratified, group-aware assignment of images to sides (train/val/test or folds).

Groups: images are linked when they share an ingest group (a physical part), an exact-duplicate
group or a near-duplicate group of the clean stage; a group is a connected set of links (union
find, through every image the clean stage saw, removed ones included). Every group lands on one
side, so a side never holds a part or a copy of an image that another side holds.

Stratification: iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011) over groups,
weighted by their images: the class with the fewest unassigned images goes first, each of its
groups to the side that still wants most images of that class (then most images overall). The
same procedure serves multiclass (one class per image) and multilabel (each defect a label,
an image without defects counts as the good class), so co-occurring defects are balanced too.
Before that, each side is seeded with one group of every class (rarest class first, smallest
group), so every class is present on every side; after it, a local search moves single groups
between sides while that brings class shares and side sizes closer to their targets (the
iterative pass matches each side's class counts, not its shares: a side can end up with a few
images too many). The maintained iterative-stratification
package stratifies samples, not weighted groups, so this module implements the procedure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import DisjointSet

from pipeline.errors import ApexLoopError
from pipeline.manifest import GROUP_COLUMNS, TaskInfo

_REFINE_PASSES = 20  # sweeps of the local search; it usually settles in a few


class SplitError(ApexLoopError):
    """The rows cannot be split as asked (too few groups of a class, or a leak)."""


def link_groups(
    rows: Sequence[Mapping[str, Any]], issues: Sequence[Mapping[str, Any]] = ()
) -> list[str]:
    """The group of each row: rows linked by an ingest group, an exact-duplicate or a
    near-duplicate group (of `issues`, the clean stage's issues manifest), directly or through
    other images, share one; its name is its first path in sorted order."""
    links: DisjointSet[tuple[str, Any]] = DisjointSet()
    for row in [*issues, *rows]:
        node = ("path", row["path"])
        links.add(node)
        named = [("group", row["group"])] if row["group"] is not None else []
        named += [(c, row[c]) for c in GROUP_COLUMNS.values() if row.get(c) is not None]
        for other in named:
            links.add(other)
            links.merge(node, other)
    first: dict[tuple[str, Any], str] = {}
    for row in rows:
        root = links[("path", row["path"])]
        first[root] = min(first.get(root, row["path"]), row["path"])
    return [f"group:{first[links[('path', row['path'])]]}" for row in rows]


def require_classes(
    rows: Sequence[Mapping[str, Any]],
    issues: Sequence[Mapping[str, Any]],
    info: TaskInfo,
    issues_path: str,
) -> None:
    """Every class the model outputs has images among `rows` (the cleaned images), and they
    hold at least two classes to tell apart; else a SplitError naming the classes and, from
    `issues` (every image the clean stage saw), how many of theirs it did not keep."""
    counts = Counter(name for row in rows for name in info.row_classes(row))
    seen = Counter(name for issue in issues for name in info.row_classes(issue))
    outputs = info.classes if info.task == "multiclass" else info.defect_classes
    empty = [name for name in outputs if not counts[name]]
    if empty:
        found = [
            f"class {name!r} has no images left: the clean stage kept none of its {seen[name]} "
            f"(removed or relabelled; see the action and reason columns of {issues_path})"
            if seen[name]
            else f"class {name!r} has no images (none were ingested)"
            for name in empty
        ]
        raise SplitError(
            "; ".join(found) + ". Fix or replace those images, keep some with a review "
            "decision (clean.overrides), or drop the class from ingest.classes"
        )
    if len(counts) < 2:
        raise SplitError(
            f"only one class ({', '.join(map(repr, counts))}) among the {len(rows)} cleaned "
            "images: a classifier needs at least two to tell apart; add images of the defect "
            "classes and list them in ingest.classes"
        )


class _Plan:
    """Which side each group goes to, and how many images of each class each side still wants."""

    def __init__(
        self,
        counts: Mapping[str, Counter[str]],
        sizes: Mapping[str, int],
        fractions: Mapping[str, float],
    ) -> None:
        self.counts, self.sizes, self.fractions = counts, sizes, fractions
        self.sides = [side for side, fraction in fractions.items() if fraction > 0]
        self.total = Counter[str]()  # images per class
        for found in counts.values():
            self.total.update(found)
        self.classes = sorted(self.total)
        self.images = sum(sizes.values())
        # every side can be given groups (train-only classes go to train, whatever its
        # fraction); only sides with a fraction take part in seeding and stratification
        self.wanted = {s: {k: f * n for k, n in self.total.items()} for s, f in fractions.items()}
        self.wanted_size = {s: f * self.images for s, f in fractions.items()}
        self.side_of: dict[str, str] = {}
        self.fixed: set[str] = set()  # groups of train-only classes: never moved

    def assign(self, group: str, side: str) -> None:
        self.side_of[group] = side
        for name, n in self.counts[group].items():
            self.wanted[side][name] -= n
        self.wanted_size[side] -= self.sizes[group]

    def best_side(self, name: str) -> str:
        """The side wanting most images of `name`, then most images (first side on ties)."""
        return max(self.sides, key=lambda s: (self.wanted[s][name], self.wanted_size[s]))


def _too_few_groups(name: str, groups: int, sides: Sequence[str]) -> SplitError:
    return SplitError(
        f"class {name!r} has {groups} group(s) (parts / duplicate groups); every side "
        f"({', '.join(sides)}) needs one, so at least {len(sides)} are needed. Add images of "
        f"other parts, merge or drop the class, or set split.min_groups_policy: train_only "
        f"to keep it in train only"
    )


def _seed_sides(plan: _Plan, order: Sequence[str], policy: str) -> dict[str, dict[str, Any]]:
    """Give every side one group of every class (rarest class first, smallest group first).

    A class with fewer groups than sides is an error, or with policy train_only is put in
    train only. Returns the classes missing from some side: their group count and those sides.
    """
    holders = {name: [g for g in order if name in plan.counts[g]] for name in plan.classes}
    rarest_first = sorted(plan.classes, key=lambda n: (len(holders[n]), n))
    missing: dict[str, dict[str, Any]] = {}
    for name in rarest_first:
        if len(holders[name]) >= len(plan.sides):
            continue
        if policy != "train_only":
            raise _too_few_groups(name, len(holders[name]), plan.sides)
        missing[name] = {"groups": len(holders[name]), "missing_from": []}
        for group in holders[name]:
            if group not in plan.side_of:
                plan.assign(group, "train")
            plan.fixed.add(group)
    for name in rarest_first:
        for side in plan.sides:
            if any(plan.side_of.get(g) == side for g in holders[name]):
                continue
            free = [g for g in holders[name] if g not in plan.side_of]
            if free and name not in missing:
                plan.assign(min(free, key=plan.sizes.__getitem__), side)  # first of equal size
                continue
            if policy != "train_only":  # its groups went to other sides as other classes' seeds
                raise _too_few_groups(name, len(holders[name]), plan.sides)
            found = missing.setdefault(name, {"groups": len(holders[name]), "missing_from": []})
            found["missing_from"].append(side)
    return missing


class _Sides:
    """Images per class and in all, and groups per class, on each side; the cost of a side."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.whole = {name: n / plan.images for name, n in plan.total.items()}
        self.target = {side: plan.fractions[side] * plan.images for side in plan.sides}
        self.count = {side: Counter[str]() for side in plan.sides}
        self.size = Counter[str]()
        self.holders = {side: Counter[str]() for side in plan.sides}
        for group, side in plan.side_of.items():
            if side in self.count:
                self.add(group, side, 1)

    def add(self, group: str, side: str, sign: int) -> None:
        for name, n in self.plan.counts[group].items():
            self.count[side][name] += sign * n
            self.holders[side][name] += sign
        self.size[side] += sign * self.plan.sizes[group]

    def cost(self, side: str, change: Counter[str], size_change: int) -> float:
        """Squared gaps of the side's class shares to the whole, plus its squared relative
        size deviation, after adding `change` (images per class) and `size_change` images."""
        size = self.size[side] + size_change
        if size <= 0:
            return float("inf")
        found = self.count[side]
        gaps = sum(((found[c] + change[c]) / size - w) ** 2 for c, w in self.whole.items())
        return gaps + ((size - self.target[side]) / self.target[side]) ** 2


def _refine(plan: _Plan, order: Sequence[str]) -> None:
    """Local search after the iterative pass: move single groups to another side while that
    lowers the summed cost of the two sides; never takes a side's last group of a class."""
    sides = _Sides(plan)
    for _ in range(_REFINE_PASSES):
        moved = False
        for group in order:
            here = plan.side_of[group]
            counts, size = plan.counts[group], plan.sizes[group]
            if group in plan.fixed or any(sides.holders[here][c] == 1 for c in counts):
                continue
            minus = Counter({c: -n for c, n in counts.items()})
            leaving = sides.cost(here, minus, -size) - sides.cost(here, Counter(), 0)
            gains = {
                there: leaving + sides.cost(there, counts, size) - sides.cost(there, Counter(), 0)
                for there in plan.sides
                if there != here
            }
            there = min(gains, key=gains.__getitem__)  # first of equal gains
            if gains[there] < -1e-12:
                sides.add(group, here, -1)
                sides.add(group, there, 1)
                plan.side_of[group] = there
                moved = True
        if not moved:
            return


def split_groups(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    info: TaskInfo,
    policy: str,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Side of every row (all rows of a group on one side), and the classes missing from some
    side (policy train_only) with their group count and those sides.

    Deterministic in (rows as a set, keys, fractions, seed): groups are ordered by name, then
    shuffled by `seed`, so the row order does not matter.
    """
    counts: dict[str, Counter[str]] = {}
    for row, key in zip(rows, keys, strict=True):
        counts.setdefault(key, Counter()).update(info.row_classes(row))
    named = sorted(counts)
    order = [named[i] for i in np.random.default_rng(seed).permutation(len(named))]
    plan = _Plan(counts, Counter(keys), fractions)
    missing = _seed_sides(plan, order, policy)
    while len(plan.side_of) < len(order):
        left = Counter[str]()
        for group in order:
            if group not in plan.side_of:
                left.update(counts[group])
        name = min(left, key=lambda n: (left[n], n))
        for group in order:
            if group not in plan.side_of and name in counts[group]:
                plan.assign(group, plan.best_side(name))
    _refine(plan, order)
    return [plan.side_of[key] for key in keys], missing


def find_leaks(
    rows: Sequence[Mapping[str, Any]],
    sides: Sequence[str],
    issues: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    """Every ingest group, exact-duplicate or near-duplicate group found on more than one side
    (checked from the raw columns, independently of how groups were formed)."""
    side_of = dict(zip((row["path"] for row in rows), sides, strict=True))
    found: dict[tuple[str, Any], set[str]] = {}
    for row in [*issues, *rows]:
        if row["path"] not in side_of:
            continue  # removed by the clean stage: in no side
        for column in ("group", *GROUP_COLUMNS.values()):
            if row.get(column) is not None:
                found.setdefault((column, row[column]), set()).add(side_of[row["path"]])
    return [
        f"{column} {value!r} is on {', '.join(sorted(on))}"
        for (column, value), on in sorted(found.items(), key=str)
        if len(on) > 1
    ]
