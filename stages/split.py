"""Split stage: leakage-proof, stratified, group-aware train/val/test (or K-fold) assignment.

Groups join images that share an ingest group (physical part), an exact-duplicate or a
near-duplicate group of the clean stage; every group lands on one side; classes are stratified
by iterative stratification over groups (pipeline/splits.py). With `split.folds: K` the
non-test rows are divided into K stratified folds (column `fold`) and fold `split.fold` is the
val side, so `dvc exp run -S split.fold=k` trains and evaluates fold k. A class left without
images (the clean stage removed them all), or a single class, stops the stage before splitting;
after splitting, any group or duplicate found on two sides is an error.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.manifest import TaskInfo, read_manifest, write_manifest
from pipeline.params import SplitParams, load_section
from pipeline.paths import write_text_atomic
from pipeline.splits import (
    SplitError,
    find_leaks,
    link_groups,
    require_classes,
    split_groups,
)
from pipeline.stagecli import run_stage

log = logging.getLogger(__name__)
SIDES = ("train", "val", "test")


def _composition(rows: list[dict[str, Any]], keys: list[str], info: TaskInfo) -> dict[str, Any]:
    """Images, groups, each class's share of the images and its number of groups: a class's
    figures on a side rest on that many independent parts, however many images they hold."""
    counts = Counter(name for row in rows for name in info.row_classes(row))
    groups: dict[str, set[str]] = {name: set() for name in info.classes}
    for row, key in zip(rows, keys, strict=True):
        for name in info.row_classes(row):
            groups[name].add(key)
    return {
        "images": len(rows),
        "groups": len(set(keys)),
        "class_share": {name: round(counts[name] / max(len(rows), 1), 4) for name in info.classes},
        "class_groups": {name: len(groups[name]) for name in info.classes},
    }


def summarise(
    rows: list[dict[str, Any]], keys: list[str], info: TaskInfo, missing: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Per side (and per fold): images, groups, each class's share of the images, its number
    of groups and its gap to the whole in points; the largest gap; classes missing from some
    side (policy train_only) with their group count and those sides."""
    whole = _composition(rows, keys, info)
    summary: dict[str, Any] = {"whole": whole}
    parts = [(side, "split", side) for side in SIDES]
    folds = sorted({row["fold"] for row in rows if row["fold"] is not None})
    parts += [(f"fold_{k}", "fold", k) for k in folds]
    for name, column, value in parts:
        members = [i for i, row in enumerate(rows) if row[column] == value]
        found = _composition([rows[i] for i in members], [keys[i] for i in members], info)
        found["gap_points"] = {  # an empty side (val: 0) has no shares to compare
            c: round(100 * (found["class_share"][c] - whole["class_share"][c]), 2)
            for c in (info.classes if members else ())
        }
        summary[name] = found
    summary["max_gap_points"] = max(
        (abs(v) for name, _, _ in parts for v in summary[name]["gap_points"].values()),
        default=0.0,
    )
    summary["classes_missing_from_sides"] = missing
    return summary


def assign(
    rows: list[dict[str, Any]], keys: list[str], params: SplitParams, info: TaskInfo
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rows with their `split` and `fold` set, and the classes missing from some side."""
    if params.folds:
        fractions = {"test": params.test}
        fractions |= {f"fold_{k}": (1 - params.test) / params.folds for k in range(params.folds)}
    else:
        fractions = {"train": params.train, "val": params.val, "test": params.test}
    fractions = {"train": 0.0, **fractions}  # train first: it takes train-only classes and ties
    parts, missing = split_groups(
        rows, keys, fractions, params.seed, info, params.min_groups_policy
    )
    out = []
    for row, part in zip(rows, parts, strict=True):
        fold = int(part.removeprefix("fold_")) if part.startswith("fold_") else None
        side = part if fold is None else ("val" if fold == params.fold else "train")
        out.append({**row, "split": side, "fold": fold})
    return out, missing


def run(
    params: SplitParams, manifest: Path, issues_path: Path, out: Path, metrics: Path
) -> dict[str, Any]:
    """Assign every cleaned image to one side and write the split manifest and metrics."""
    rows, info = read_manifest(manifest, "images")
    issues, _ = read_manifest(issues_path, "issues")
    require_classes(rows, issues, info, str(issues_path))
    keys = link_groups(rows, issues)
    split_rows, missing = assign(rows, keys, params, info)
    leaks = find_leaks(split_rows, [row["split"] for row in split_rows], issues)
    if leaks:
        raise SplitError("groups on more than one side: " + "; ".join(leaks))
    write_manifest(out, split_rows, "split", info)
    summary = summarise(split_rows, keys, info, missing)
    write_text_atomic(metrics, json.dumps(summary, indent=2) + "\n")
    log.info("split %s", {side: summary[side]["images"] for side in SIDES})
    if missing:
        log.warning("classes missing from some side (too few groups): %s", missing)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="cleaned images manifest")
    parser.add_argument("--issues", type=Path, required=True, help="clean's issues manifest")
    parser.add_argument("--out", type=Path, required=True, help="split manifest")
    parser.add_argument("--metrics", type=Path, required=True, help="split summary (JSON)")
    return parser


def call(args: argparse.Namespace) -> dict[str, Any]:
    """Load this stage's params section and run it on the paths in `args`."""
    return run(
        load_section(args.params, "split", SplitParams),
        args.manifest,
        args.issues,
        args.out,
        args.metrics,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_stage(lambda: call(args))


if __name__ == "__main__":
    raise SystemExit(main())
