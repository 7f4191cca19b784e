"""Split stage: group-aware, stratified, seeded train/val/test assignment of the cleaned images."""

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
from pipeline.splits import group_keys, split_by_group
from pipeline.stagecli import run_stage

log = logging.getLogger(__name__)
SIDES = ("train", "val", "test")


def summarise(rows: list[dict[str, Any]], info: TaskInfo) -> dict[str, Any]:
    """Per side: images, groups, and each class's share of the side's images."""
    summary: dict[str, Any] = {}
    keys = group_keys(rows)
    for side in SIDES:
        members = [(row, key) for row, key in zip(rows, keys, strict=True) if row["split"] == side]
        counts = Counter(name for row, _ in members for name in info.row_classes(row))
        summary[side] = {
            "images": len(members),
            "groups": len({key for _, key in members}),
            "class_share": {
                name: round(counts[name] / max(len(members), 1), 4) for name in info.classes
            },
        }
    return summary


def run(params: SplitParams, manifest: Path, out: Path, metrics: Path) -> dict[str, Any]:
    """Assign every cleaned image to one side and write the split manifest and metrics."""
    rows, info = read_manifest(manifest, "images")
    fractions = {"train": params.train, "val": params.val, "test": params.test}
    sides = split_by_group(rows, fractions, params.seed, info)
    split_rows = [{**row, "split": side} for row, side in zip(rows, sides, strict=True)]
    write_manifest(out, split_rows, "split", info)
    summary = summarise(split_rows, info)
    write_text_atomic(metrics, json.dumps(summary, indent=2) + "\n")
    log.info("split %s", {side: summary[side]["images"] for side in SIDES})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="cleaned images manifest")
    parser.add_argument("--out", type=Path, required=True, help="split manifest")
    parser.add_argument("--metrics", type=Path, required=True, help="split summary (JSON)")
    args = parser.parse_args(argv)
    return run_stage(
        lambda: run(
            load_section(args.params, "split", SplitParams), args.manifest, args.out, args.metrics
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
