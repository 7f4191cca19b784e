"""Ingest stage: read a labelled image source into the images manifest.

Every file the source names becomes one row: sha256 of its bytes, size, mode, format, labels,
group, defect boxes. Unreadable files (zero-byte, truncated, not an image, unsupported type,
over max_pixels) are kept with `is_unreadable_issue` and the reason; nothing is dropped.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.io import ImageFacts, ImageReadError, inspect_image
from pipeline.manifest import TaskInfo, write_manifest
from pipeline.masks import boxes_from_mask, mask_path_for, read_mask
from pipeline.params import IngestParams, load_section
from pipeline.paths import PathError, resolve_inside
from pipeline.sources import (
    Box,
    Entry,
    SourceError,
    check_classes,
    list_folders,
    read_table,
    read_voc,
)
from pipeline.stagecli import run_stage

log = logging.getLogger(__name__)


def _facts(images: Path, entry: Entry, params: IngestParams) -> ImageFacts:
    try:
        path = resolve_inside(images, entry.path)
    except PathError as exc:
        return ImageFacts(sha256="", reason=str(exc))
    try:
        facts = inspect_image(path, params.max_pixels)
    except OSError as exc:
        return ImageFacts(sha256="", reason=f"cannot read file: {exc}")
    # Checked whether or not Pillow can decode it: the extension is the first thing to fix.
    suffix = path.suffix.lower()
    if suffix not in {ext.lower() for ext in params.extensions}:
        allowed = ", ".join(params.extensions)
        return ImageFacts(
            facts.sha256, reason=f"unsupported extension {suffix!r} (ingest.extensions: {allowed})"
        )
    return facts


def _mask_boxes(
    masks: Path, entry: Entry, facts: ImageFacts, defects: list[str], params: IngestParams
) -> list[Box]:
    """Boxes from the mirrored mask of a readable defect image ([] when it has no mask)."""
    if not defects or facts.reason is not None:
        return []
    path = mask_path_for(masks, entry.path)  # PathError if a link leads outside the data root
    if not path.is_file():
        return []
    if len(defects) > 1:
        raise SourceError(
            f"{path}: a mask cannot say which of {defects} each region is; give boxes with "
            "labels in the table or VOC files instead"
        )
    assert facts.width is not None and facts.height is not None
    try:
        mask = read_mask(path, (facts.width, facts.height), params.max_pixels)
    except ImageReadError as exc:
        raise SourceError(f"unusable mask for {entry.path}: {exc}") from None
    return boxes_from_mask(mask, params.mask_threshold, params.mask_min_area, defects[0])


def _check_boxes(entry: Entry, facts: ImageFacts, boxes: list[Box]) -> None:
    if facts.width is None or facts.height is None:
        return
    for box in boxes:
        if box[0] < 0 or box[1] < 0 or box[2] > facts.width or box[3] > facts.height:
            raise SourceError(
                f"{entry.path}: box {list(box)} lies outside the {facts.width}x{facts.height} image"
            )


def build_row(
    images: Path, masks: Path | None, entry: Entry, params: IngestParams
) -> dict[str, Any]:
    """One manifest row for one source entry (path in the row is relative to the root)."""
    facts = _facts(images, entry, params)
    defects = sorted(set(entry.labels) - {params.good_class})
    boxes = list(entry.boxes)
    if masks is not None:
        boxes += _mask_boxes(masks, entry, facts, defects, params)
    _check_boxes(entry, facts, boxes)
    return {
        "path": PurePosixPath(params.images, entry.path).as_posix(),
        "sha256": facts.sha256,
        "width": facts.width,
        "height": facts.height,
        "mode": facts.mode,
        "format": facts.format,
        "label": entry.labels[0] if params.task == "multiclass" else None,
        "labels": defects,
        "group": entry.group,
        "boxes": [dict(zip(("x0", "y0", "x1", "y1", "label"), box, strict=True)) for box in boxes],
        "is_unreadable_issue": facts.reason is not None,
        "unreadable_reason": facts.reason,
    }


def read_entries(root: Path, params: IngestParams) -> list[Entry]:
    """Entries from the source chosen in params, sorted by path."""
    images = resolve_inside(root, params.images)
    if params.source == "folders":
        entries = list_folders(images, params)
    elif params.source == "table":
        entries = read_table(root, images, params)
    else:
        entries = read_voc(root, images, params)
    if not entries:
        raise SourceError(f"{root}: the {params.source} source lists no images")
    return sorted(entries, key=lambda entry: entry.path)


def run(params: IngestParams, out: Path) -> list[dict[str, Any]]:
    """Read the source, inspect every file once, and write the images manifest to `out`."""
    root = Path(params.root)
    if not root.is_dir():
        raise SourceError(f"{root}: dataset folder not found (ingest.root in params.yaml)")
    entries = read_entries(root, params)
    info = TaskInfo(params.task, check_classes(entries, params), params.good_class)
    images = resolve_inside(root, params.images)
    masks = resolve_inside(root, params.masks) if params.masks else None
    rows = [build_row(images, masks, entry, params) for entry in entries]
    write_manifest(out, rows, "images", info)
    unreadable = sum(row["is_unreadable_issue"] for row in rows)
    per_class = Counter(row["label"] or "|".join(row["labels"]) or "good" for row in rows)
    log.info("ingested %d images (%d unreadable): %s", len(rows), unreadable, dict(per_class))
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="images manifest (parquet)")
    return parser


def call(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Load this stage's params section and run it on the paths in `args` (the CLI's, or the
    Prefect flow's parse of the same dvc.yaml command)."""
    return run(load_section(args.params, "ingest", IngestParams), args.out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_stage(lambda: call(args))


if __name__ == "__main__":
    raise SystemExit(main())
