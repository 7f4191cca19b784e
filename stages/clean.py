"""Clean stage: the data-quality gate.

Decodes every readable image once (in `clean.workers` processes) for all checks: exact
duplicates (hash of the decoded pixels), near duplicates (perceptual hash within a Hamming
distance, confirmed by the phase correlation of the images' fine texture, grouped by connected
components), duplicates carrying different labels, blur
(Laplacian variance, absolute and relative to the image's class), dark, light and odd-size
images. Each issue type's action is a param: remove, flag (kept, marked) or off. Of a duplicate
group the first path in sorted order is kept; a group whose members carry different labels is
a label-error signal and is never resolved by keeping one side silently. Unreadable images are
always removed. Every input image appears in the issues manifest with every score and flag,
the action taken and why.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from pipeline.checks import (
    Blob,
    Features,
    Mapper,
    compute_features,
    confirms_near_duplicates,
    read_spectra,
    score_checks,
)
from pipeline.dedup import (
    group_exact_duplicates,
    group_near_duplicates,
    mark_conflicts,
    mark_duplicates,
    texture_agrees,
)
from pipeline.manifest import CHECKS, IMAGE_FIELDS, TaskInfo, read_manifest, write_manifest
from pipeline.params import CleanParams, load_section
from pipeline.paths import write_text_atomic
from pipeline.review import OverrideError, read_overrides, write_review_page, write_review_queue
from pipeline.stagecli import run_stage

log = logging.getLogger(__name__)
_IMAGE_COLUMNS = [field.name for field in IMAGE_FIELDS]


def _decide(issue: dict[str, Any], params: CleanParams) -> tuple[str, str | None]:
    """(action, reason): remove if any found issue's action is remove, flag if any is found."""
    if issue["is_unreadable_issue"]:
        return "remove", f"unreadable: {issue['unreadable_reason']}"
    found = [check for check in CHECKS[1:] if issue[f"is_{check}_issue"]]
    if not found:
        return "keep", None
    actions = {check: getattr(params.actions, check) for check in found}
    if actions.get("label") == "relabel" and not issue["is_suggestion_confident"]:
        actions["label"] = "flag"  # only confident suggestions are applied
    taken = set(actions.values())
    action = next(a for a in ("remove", "relabel", "flag") if a in taken)
    return action, "; ".join(f"{check} ({actions[check]})" for check in found)


def _label_step(
    issues: list[dict[str, Any]],
    features: list[Features | None],
    kind: str | None,
    info: TaskInfo,
    params: CleanParams,
) -> dict[str, Any]:
    """Set the label-issue columns; return what the metrics should say about the step."""
    for issue in issues:
        issue.update(
            label_quality=None,
            suggested_label=None,
            is_label_issue=False,
            is_suggestion_confident=False,
        )
    if kind is None:
        return {"embedding": None, "skipped_reason": "check off", "skipped_classes": {}}
    used, vectors = [], []
    for index, feature in enumerate(features):
        if feature is not None and feature.embedding is not None:
            used.append(index)
            vectors.append(feature.embedding)
    groups = [issues[i]["group"] or f"path:{issues[i]['path']}" for i in used]
    settings, distinct = params.label_issues, len(set(groups))
    if distinct < settings.folds:
        log.warning("label issues skipped: %d groups for %d folds", distinct, settings.folds)
        reason = f"{distinct} groups < {settings.folds} folds"
        return {"embedding": kind, "skipped_reason": reason, "skipped_classes": {}}
    x = np.stack(vectors)  # (N, D)
    from pipeline.labels import assess_multiclass, assess_multilabel  # cleanlab, sklearn

    if info.task == "multiclass":
        findings, skipped = assess_multiclass(
            x, [issues[i]["label"] for i in used], groups, settings
        )
    else:
        multi = [issues[i]["labels"] for i in used]
        findings, skipped = assess_multilabel(x, multi, info.defect_classes, groups, settings)
    for index, finding in zip(used, findings, strict=True):
        if finding.suggested is not None:
            issues[index].update(
                label_quality=finding.quality,
                suggested_label=";".join(finding.suggested),
                is_label_issue=finding.is_issue,
                is_suggestion_confident=finding.is_confident,
            )
    if skipped:
        log.warning("label issues skipped for classes with fewer images than folds: %s", skipped)
    return {"embedding": kind, "skipped_reason": None, "skipped_classes": skipped}


def _near_duplicates(
    hashes: list[int | None], params: CleanParams, scratch: Path
) -> list[int | None]:
    """Near-duplicate groups: hashes within the tolerance, confirmed (unless the threshold is
    0) by the phase correlation of the two images' verification patches."""
    threshold = params.near_duplicate_min_correlation
    if not confirms_near_duplicates(params):
        return group_near_duplicates(hashes, params.near_duplicate_max_distance)
    levels = read_spectra(scratch)

    def confirm(pairs: np.ndarray) -> np.ndarray:
        return texture_agrees(levels, pairs, threshold, params.workers)

    return group_near_duplicates(hashes, params.near_duplicate_max_distance, confirm)


def find_issues(
    root: Path,
    rows: list[dict[str, Any]],
    params: CleanParams,
    info: TaskInfo,
    scratch: Path,
    mapper: Mapper | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[Blob | None]]:
    """Issue rows (every input row plus its features, groups, scores, flags and action), the
    label-issue step's summary, and each row's preview JPEG (written to `scratch`)."""
    kind = None
    if params.actions.label != "off":
        # torch, torchvision, cleanlab and sklearn (3-7 s to import, 1 GB) load only for the
        # label-issue check: without it the stage starts in under a second
        from pipeline.embeddings import resolve_kind

        kind = resolve_kind(params.label_issues.embedding)
    features = compute_features(root, rows, params, kind, scratch, mapper=mapper)
    pixel = [f.pixel_sha256 if f else None for f in features]
    hashes = [f.perceptual_hash if f else None for f in features]
    near = (
        _near_duplicates(hashes, params, scratch)
        if params.actions.near_duplicate != "off"
        else [None] * len(rows)
    )
    sharpness: dict[str, list[float]] = {}
    for row, feature in zip(rows, features, strict=True):
        if feature is not None:
            sharpness.setdefault(info.row_classes(row)[0], []).append(feature.sharpness)
    medians = {name: median(values) for name, values in sharpness.items()}
    issues = []
    for row, feature, digest, perceptual, exact, close in zip(
        rows, features, pixel, hashes, group_exact_duplicates(pixel), near, strict=True
    ):
        issue = {
            **row,
            "pixel_sha256": digest,
            "perceptual_hash": perceptual,
            "sharpness": feature.sharpness if feature else None,
            "exact_dup_group": exact,
            "near_dup_group": close,
        }
        score_checks(issue, feature, medians.get(info.row_classes(row)[0], 0.0), params)
        issues.append(issue)
    mark_duplicates(issues, "exact_duplicate")
    mark_duplicates(issues, "near_duplicate")
    mark_conflicts(issues)
    step = _label_step(issues, features, kind, info, params)
    for issue in issues:
        issue["action"], issue["reason"] = _decide(issue, params)
    return issues, step, [feature.preview if feature else None for feature in features]


def apply_overrides(
    issues: list[dict[str, Any]], decisions: dict[str, tuple[str, str | None]]
) -> None:
    """A reviewer's decision replaces the automatic action (keep, drop, relabel to a class)."""
    for issue in issues:
        issue["override"] = None
        if issue["path"] not in decisions:
            continue
        kind, target = decisions[issue["path"]]
        issue["override"] = f"{kind}:{target}" if target else kind
        issue["reason"] = f"override {issue['override']} (automatic: {issue['action']})"
        issue["action"] = {"keep": "keep", "drop": "remove", "relabel": "relabel"}[kind]
        if kind == "keep" and issue["is_unreadable_issue"]:
            raise OverrideError(f"{issue['path']}: cannot keep an unreadable image")


def cleaned_row(issue: dict[str, Any], info: TaskInfo) -> dict[str, Any]:
    """The images-manifest row of a kept image, its label replaced when it was relabelled
    (to the reviewer's class when an override says so, else to the confident suggestion)."""
    row = {name: issue[name] for name in _IMAGE_COLUMNS}
    if issue["action"] == "relabel":
        override = issue["override"] or ""
        suggested = override.partition(":")[2] if override else issue["suggested_label"]
        if suggested == info.good_class and info.task == "multilabel":
            suggested = ""
        if info.task == "multiclass":
            row.update(label=suggested, labels=[] if suggested == info.good_class else [suggested])
        else:
            row.update(labels=suggested.split(";") if suggested else [])
    return row


def summarise(issues: list[dict[str, Any]], info: TaskInfo) -> dict[str, Any]:
    """Counts per issue type, overall and per class, for `dvc metrics diff`."""
    per_class: dict[str, Counter[str]] = {name: Counter() for name in info.classes}
    for issue in issues:
        for name in info.row_classes(issue):
            counts = per_class.setdefault(name, Counter())
            counts["images"] += 1
            counts["removed"] += issue["action"] == "remove"
            counts["flagged"] += issue["action"] == "flag"
            counts.update(check for check in CHECKS if issue[f"is_{check}_issue"])
    return {
        "images_in": len(issues),
        "images_out": sum(issue["action"] != "remove" for issue in issues),
        "removed": sum(issue["action"] == "remove" for issue in issues),
        "flagged": sum(issue["action"] == "flag" for issue in issues),
        "relabelled": sum(issue["action"] == "relabel" for issue in issues),
        "overridden": sum(issue["override"] is not None for issue in issues),
        "issues": {check: sum(issue[f"is_{check}_issue"] for issue in issues) for check in CHECKS},
        "per_class": {
            name: {key: counts[key] for key in ("images", "removed", "flagged", *CHECKS)}
            for name, counts in per_class.items()
        },
    }


def run(
    params: CleanParams,
    root: Path,
    manifest: Path,
    out: Path,
    issues_out: Path,
    metrics: Path,
    review: Path,
    queue: Path,
    mapper: Mapper | None = None,
) -> dict[str, Any]:
    """Find issues, apply the reviewer's overrides, and write the issues manifest, the cleaned
    manifest, the summary metrics, the review page and the review queue. `mapper` runs the
    per-image work (see `compute_features`); None: `clean.workers` local processes."""
    rows, info = read_manifest(manifest, "images")
    decisions = read_overrides(Path(params.overrides), {row["path"] for row in rows}, info)
    # previews and texture spectra are scratch files beside the review page (same file system)
    review.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".clean-scratch-", dir=review.parent) as scratch:
        issues, label_step, shown = find_issues(
            root, rows, params, info, Path(scratch), mapper=mapper
        )
        apply_overrides(issues, decisions)
        write_review_page(review, issues, shown, info)
    kept = [cleaned_row(issue, info) for issue in issues if issue["action"] != "remove"]
    summary = {**summarise(issues, info), "label_issues": label_step}
    write_manifest(issues_out, issues, "issues", info)
    write_manifest(out, kept, "images", info)
    write_text_atomic(metrics, json.dumps(summary, indent=2) + "\n")
    write_review_queue(queue, issues)
    log.info(
        "kept %d of %d images (%d flagged); issues %s",
        len(kept),
        len(rows),
        summary["flagged"],
        summary["issues"],
    )
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--manifest", type=Path, required=True, help="images manifest in")
    parser.add_argument("--out", type=Path, required=True, help="cleaned images manifest")
    parser.add_argument("--issues", type=Path, required=True, help="issues manifest")
    parser.add_argument("--metrics", type=Path, required=True, help="summary counts (JSON)")
    parser.add_argument("--review", type=Path, required=True, help="review page (HTML)")
    parser.add_argument("--queue", type=Path, required=True, help="review queue (CSV) to edit")
    return parser


def call(args: argparse.Namespace, mapper: Mapper | None = None) -> dict[str, Any]:
    """Load this stage's params section and run it on the paths in `args`; `mapper` as in
    `run`."""
    return run(
        load_section(args.params, "clean", CleanParams),
        args.root,
        args.manifest,
        args.out,
        args.issues,
        args.metrics,
        args.review,
        args.queue,
        mapper=mapper,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_stage(lambda: call(args))


if __name__ == "__main__":
    raise SystemExit(main())
