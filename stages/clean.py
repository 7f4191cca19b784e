"""Clean stage: the data-quality gate.

Decodes every readable image once, groups exact duplicates by the hash of their decoded pixels,
and decides per image: keep, or remove with a reason. Unreadable images are always removed
(nothing can be learned from them). Of a duplicate group with one label, the first path in
sorted order is kept; a group whose members carry different labels is a label-error signal and
is never resolved by keeping one side silently. Every input image appears in the issues
manifest with its flags, the action and why.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.dedup import group_exact_duplicates
from pipeline.io import open_image, pixel_sha256
from pipeline.manifest import IMAGE_FIELDS, TaskInfo, read_manifest, write_manifest
from pipeline.params import CleanParams, load_section
from pipeline.paths import resolve_inside, write_text_atomic
from pipeline.stagecli import run_stage

log = logging.getLogger(__name__)
_IMAGE_COLUMNS = [field.name for field in IMAGE_FIELDS]


def _pixel_hash(root: Path, row: dict[str, Any]) -> str | None:
    if row["is_unreadable_issue"]:
        return None
    image = open_image(resolve_inside(root, row["path"]), row["width"] * row["height"])
    return pixel_sha256(image)


def _label_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["label"], tuple(row["labels"]))


def _conflicting_groups(rows: list[dict[str, Any]], groups: list[int | None]) -> set[int]:
    labels: dict[int, set[tuple[Any, ...]]] = {}
    for row, group in zip(rows, groups, strict=True):
        if group is not None:
            labels.setdefault(group, set()).add(_label_key(row))
    return {group for group, keys in labels.items() if len(keys) > 1}


def _decide(row: dict[str, Any], params: CleanParams) -> tuple[str, str | None]:
    """(action, reason): action is keep, flag (kept, marked) or remove."""
    if row["is_unreadable_issue"]:
        return "remove", f"unreadable: {row['unreadable_reason']}"
    if row["is_conflicting_label_issue"]:
        why = f"identical pixels with different labels (group {row['exact_duplicate_group']})"
        return params.conflicting_label_action, why
    if row["is_exact_duplicate_issue"]:
        why = f"exact duplicate (group {row['exact_duplicate_group']}; first path kept)"
        return params.exact_duplicate_action, why
    return "keep", None


def find_issues(
    root: Path, rows: list[dict[str, Any]], params: CleanParams
) -> list[dict[str, Any]]:
    """Issue rows: every input row plus its pixel hash, duplicate group, flags and action."""
    hashes = [_pixel_hash(root, row) for row in rows]
    groups = group_exact_duplicates(hashes)
    conflicting = _conflicting_groups(rows, groups)
    # The first path in sorted order is the copy kept, whatever order the manifest lists them in.
    first_path: dict[int, str] = {}
    for row, group in zip(rows, groups, strict=True):
        if group is not None:
            first_path[group] = min(first_path.get(group, row["path"]), row["path"])
    issues = []
    for row, digest, group in zip(rows, hashes, groups, strict=True):
        issue = {**row, "pixel_sha256": digest, "exact_duplicate_group": group}
        issue["is_conflicting_label_issue"] = group in conflicting
        issue["is_exact_duplicate_issue"] = group is not None and row["path"] != first_path[group]
        issue["action"], issue["reason"] = _decide(issue, params)
        issues.append(issue)
    return issues


def summarise(issues: list[dict[str, Any]], info: TaskInfo) -> dict[str, Any]:
    """Counts per issue type and per class for the metrics JSON."""
    checks = ["unreadable", "exact_duplicate", "conflicting_label"]
    per_class: dict[str, Counter[str]] = {name: Counter() for name in info.classes}
    for issue in issues:
        for name in info.row_classes(issue):
            counts = per_class.setdefault(name, Counter())
            counts["images"] += 1
            counts["removed"] += issue["action"] == "remove"
    return {
        "images_in": len(issues),
        "images_out": sum(issue["action"] != "remove" for issue in issues),
        "issues": {check: sum(issue[f"is_{check}_issue"] for issue in issues) for check in checks},
        "removed": sum(issue["action"] == "remove" for issue in issues),
        "per_class": {name: dict(counts) for name, counts in per_class.items()},
    }


def run(
    params: CleanParams, root: Path, manifest: Path, out: Path, issues_out: Path, metrics: Path
) -> dict[str, Any]:
    """Find issues, write the issues manifest, the cleaned manifest and the summary metrics."""
    rows, info = read_manifest(manifest, "images")
    issues = find_issues(root, rows, params)
    kept = [
        {name: issue[name] for name in _IMAGE_COLUMNS}
        for issue in issues
        if issue["action"] != "remove"
    ]
    summary = summarise(issues, info)
    write_manifest(issues_out, issues, "issues", info)
    write_manifest(out, kept, "images", info)
    write_text_atomic(metrics, json.dumps(summary, indent=2) + "\n")
    log.info("kept %d of %d images; issues %s", len(kept), len(rows), summary["issues"])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--manifest", type=Path, required=True, help="images manifest in")
    parser.add_argument("--out", type=Path, required=True, help="cleaned images manifest")
    parser.add_argument("--issues", type=Path, required=True, help="issues manifest")
    parser.add_argument("--metrics", type=Path, required=True, help="summary counts (JSON)")
    args = parser.parse_args(argv)
    return run_stage(
        lambda: run(
            load_section(args.params, "clean", CleanParams),
            args.root,
            args.manifest,
            args.out,
            args.issues,
            args.metrics,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
