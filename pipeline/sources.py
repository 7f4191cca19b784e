"""Where labels come from: class folders, an annotation table, or Pascal VOC XML files.

Each reader returns `Entry` records (path relative to the image folder, labels, group, boxes).
Problems that are the user's to fix (missing files, paths escaping the data root, unknown
classes, duplicate rows, malformed boxes) are collected and raised together as one SourceError
that lists every offending row, so a user fixes the table once instead of once per run.
"""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline.errors import ApexLoopError
from pipeline.params import IngestParams
from pipeline.paths import PathError, resolve_inside

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float, str]
_MAX_LISTED = 20


class SourceError(ApexLoopError):
    """The annotation source has problems the user must fix; the message lists them."""


@dataclass(frozen=True)
class Entry:
    """One labelled image as the source describes it (path relative to the image folder)."""

    path: str
    labels: tuple[str, ...]  # multiclass: exactly one class; multilabel: defects present
    group: str | None = None
    boxes: tuple[Box, ...] = field(default_factory=tuple)


def _raise_if(problems: list[str], what: str, remedy: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:_MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        )
        raise SourceError(f"{what}: {len(problems)} problem(s); {remedy}:\n  {shown}{more}")


def _leads_back(link: Path, images: Path) -> bool:
    """Whether a symlinked folder leads to `images` or a folder holding it: walking it would
    visit every image again, under another name."""
    try:
        target = link.resolve()
    except (RuntimeError, OSError):  # a link to itself, or a chain of links that never ends
        return True
    return images.resolve().is_relative_to(target)


def _walk_class(images: Path, class_dir: Path, problems: list[str]) -> list[Entry]:
    """Entries of the non-hidden files under one class folder. Symlinked sub-folders are not
    walked (a link loop cannot hang it) and are logged; names that are not UTF-8 (they cannot
    be stored in the manifest) go to `problems`, shown by their bytes."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        linked = [
            (Path(dirpath) / d).relative_to(images).as_posix()
            for d in dirnames
            if (Path(dirpath) / d).is_symlink()
        ]
        if linked:
            log.warning(
                "%s: symlinked folder(s) %s not followed (a link can loop back); move or copy "
                "their images into the class folder if they belong to the data set",
                images,
                linked,
            )
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = (Path(dirpath) / name).relative_to(images).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes, kept by Python as surrogates
                problems.append(f"{os.fsencode(rel)!r}: file name is not valid UTF-8")
                continue
            entries.append(Entry(rel, (class_dir.name,)))
    return entries


def list_folders(images: Path, params: IngestParams) -> list[Entry]:
    """Source (a): `<images>/<class>/**/*`. Every non-hidden file becomes an entry.

    Files with an unsupported extension are kept (ingest records them as unreadable).
    Symlinked sub-folders are not followed, so a link loop cannot hang the walk; a class folder
    that links back to the image folder (or above it) is an error.
    """
    if params.task != "multiclass":
        raise SourceError("source 'folders' gives one class per image: use it with task multiclass")
    if not images.is_dir():
        raise SourceError(
            f"{images}: image folder not found; set ingest.root and ingest.images in "
            "params.yaml to the folder that holds the class folders"
        )
    visible = sorted(p for p in images.iterdir() if not p.name.startswith("."))
    loops = [p.name for p in visible if p.is_symlink() and _leads_back(p, images)]
    if loops:
        raise SourceError(
            f"{images}: class folder(s) {loops} link back to the image folder (a symlink loop: "
            "every image would be ingested again under that class); remove the link(s)"
        )
    loose = [p.name for p in visible if not p.is_dir()]
    if loose:
        raise SourceError(
            f"{images}: files outside any class folder {loose[:_MAX_LISTED]}; "
            "move each into <images>/<class>/"
        )
    entries: list[Entry] = []
    problems: list[str] = []
    for class_dir in visible:
        entries += _walk_class(images, class_dir, problems)
    _raise_if(problems, str(images), "rename these files (and folders) to UTF-8 names")
    return entries


def _read_table_file(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SourceError(f"{path}: annotation table not found (ingest.table)")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path}: not UTF-8 text ({exc}); save it as UTF-8 (e.g. 'CSV UTF-8' in a "
            "spreadsheet program)"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, pa.ArrowInvalid) as exc:
        raise SourceError(
            f"{path}: cannot be read as a table ({exc}); fix the file or export it again"
        ) from None
    raise SourceError(f"{path}: annotation table must be .csv or .parquet")


def _is_missing(value: Any) -> bool:
    """Empty CSV cell or parquet null (pandas reads those as None, NaN or NA)."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _parse_boxes(raw: Any, where: str, problems: list[str]) -> tuple[Box, ...]:
    if _is_missing(raw):
        return ()
    try:
        items = json.loads(raw) if isinstance(raw, str) else list(raw)
        boxes = tuple(
            (float(b[0]), float(b[1]), float(b[2]), float(b[3]), str(b[4])) for b in items
        )
    except (ValueError, TypeError, IndexError) as exc:
        problems.append(f"{where}: boxes not a JSON list of [x0, y0, x1, y1, label]: {exc}")
        return ()
    for box in boxes:
        if not (box[0] < box[2] and box[1] < box[3]):
            problems.append(f"{where}: box {list(box)} needs x0 < x1 and y0 < y1")
    return boxes


def _split_labels(raw: Any, params: IngestParams) -> tuple[str, ...]:
    if _is_missing(raw):
        return ()
    if params.task == "multiclass":
        return (str(raw).strip(),)
    if isinstance(raw, str):
        parts = [part.strip() for part in raw.split(params.label_separator)]
    else:
        parts = [str(part).strip() for part in raw]
    return tuple(sorted({part for part in parts if part}))


def read_table(root: Path, images: Path, params: IngestParams) -> list[Entry]:
    """Source (b): a CSV/parquet table of path, label(s), optional group and boxes."""
    assert params.table is not None
    table_path = resolve_inside(root, params.table)
    frame = _read_table_file(table_path)
    wanted = [params.path_column, params.label_column]
    wanted += [c for c in (params.group_column, params.boxes_column) if c]
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        raise SourceError(
            f"{table_path}: missing column(s) {absent}; columns are {list(frame.columns)}"
        )
    problems: list[str] = []
    entries = []
    seen: dict[str, int] = {}
    for number, row in enumerate(frame.to_dict("records"), start=2):
        where = f"{table_path.name} row {number} ({row[params.path_column]!r})"
        rel = str(row[params.path_column]).strip().replace("\\", "/")
        if rel in seen:
            problems.append(f"{where}: duplicate of row {seen[rel]}")
            continue
        seen[rel] = number
        try:
            target = resolve_inside(images, rel)
        except PathError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if not target.is_file():
            problems.append(f"{where}: file not found at {target}")
            continue
        group = row[params.group_column] if params.group_column else None
        boxes = (
            _parse_boxes(row[params.boxes_column], where, problems) if params.boxes_column else ()
        )
        labels = _split_labels(row[params.label_column], params)
        if params.task == "multiclass" and not labels:
            problems.append(f"{where}: no label (a multiclass row needs one class)")
            continue
        entries.append(Entry(rel, labels, None if _is_missing(group) else str(group), boxes))
    _raise_if(problems, str(table_path), f"fix or delete these rows of {table_path.name}")
    return entries


def _voc_entry(xml_path: Path, params: IngestParams) -> Entry:
    tree = ET.parse(xml_path)
    name = tree.findtext("filename")
    if not name:
        raise SourceError(f"{xml_path}: no <filename> element")
    boxes: list[Box] = []
    for obj in tree.iter("object"):
        box = obj.find("bndbox")
        label = (obj.findtext("name") or "").strip()
        if box is None or not label:
            raise SourceError(f"{xml_path}: an <object> lacks <name> or <bndbox>")
        coords = [box.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if any(not text or not text.strip() for text in coords):
            raise SourceError(f"{xml_path}: <bndbox> of {label!r} lacks xmin/ymin/xmax/ymax")
        x0, y0, x1, y1 = (float(text or "") for text in coords)
        if not (x0 < x1 and y0 < y1):
            raise SourceError(
                f"{xml_path}: box {[x0, y0, x1, y1]} of {label!r} needs x0 < x1 and y0 < y1"
            )
        boxes.append((x0, y0, x1, y1, label))
    labels = tuple(sorted({box[4] for box in boxes}))
    if params.task == "multiclass":
        if len(labels) > 1:
            raise SourceError(
                f"{xml_path}: objects of several classes {labels} in a multiclass task; "
                "use task: multilabel"
            )
        labels = labels or (params.good_class,)
    return Entry(name.strip(), labels, None, tuple(boxes))


def read_voc(root: Path, images: Path, params: IngestParams) -> list[Entry]:
    """Source (d): Pascal VOC XML files; `<filename>` is relative to the image folder."""
    assert params.voc is not None
    voc_dir = resolve_inside(root, params.voc)
    if not voc_dir.is_dir():
        raise SourceError(f"{voc_dir}: VOC annotation folder not found (ingest.voc)")
    entries, problems = [], []
    seen: dict[Path, str] = {}
    for xml_path in sorted(voc_dir.rglob("*.xml")):
        try:
            entry = _voc_entry(xml_path, params)
            target = resolve_inside(images, entry.path)
        except (SourceError, PathError, ET.ParseError, ValueError) as exc:
            problems.append(f"{xml_path.name}: {exc}")
            continue
        if not target.is_file():
            problems.append(f"{xml_path.name}: image {entry.path!r} not found at {target}")
            continue
        if target in seen:
            problems.append(f"{xml_path.name}: same image {entry.path!r} as {seen[target]}")
            continue
        seen[target] = xml_path.name
        entries.append(entry)
    _raise_if(problems, str(voc_dir), "fix or delete these annotation files")
    return entries


def check_classes(entries: list[Entry], params: IngestParams) -> tuple[str, ...]:
    """Return the class list (params or inferred); unknown class names are an error."""
    used = {label for entry in entries for label in entry.labels}
    used |= {box[4] for entry in entries for box in entry.boxes}
    if params.classes is None:
        return tuple(sorted(used | {params.good_class}))
    unknown = sorted(used - set(params.classes))
    if unknown:
        where = [
            e.path for e in entries if (set(e.labels) | {b[4] for b in e.boxes}) & set(unknown)
        ][:5]
        raise SourceError(
            f"unknown class name(s) {unknown} (e.g. in {where}); known classes are "
            f"{list(params.classes)}: fix the labels or add the class to ingest.classes"
        )
    return tuple(params.classes)
