"""Parquet manifests between stages: schemas, versioned metadata, validated reads, atomic writes.

A manifest is one row per image. Paths are relative to the dataset root. `labels` always holds
the defect labels present in the image (empty for a good image) for both tasks; `label` holds
the single class of a multiclass image (good included) and is null for multilabel tasks.
The file metadata carries the schema kind and version and the task description (task, classes,
good class), so downstream stages never re-derive the class list from whatever rows survived.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ApexLoopError
from pipeline.paths import atomic_output

SCHEMA_VERSION = 3
_META_KEY = b"apexloop"

BOX_TYPE = pa.struct(
    [
        pa.field("x0", pa.float32(), nullable=False),
        pa.field("y0", pa.float32(), nullable=False),
        pa.field("x1", pa.float32(), nullable=False),
        pa.field("y1", pa.float32(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
    ]
)

IMAGE_FIELDS = [
    pa.field("path", pa.string(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("mode", pa.string()),
    pa.field("format", pa.string()),
    pa.field("label", pa.string()),
    pa.field("labels", pa.list_(pa.string()), nullable=False),
    pa.field("group", pa.string()),
    pa.field("boxes", pa.list_(BOX_TYPE), nullable=False),
    pa.field("is_unreadable_issue", pa.bool_(), nullable=False),
    pa.field("unreadable_reason", pa.string()),
]

# The clean stage's per-check columns follow CleanVision's habit: <check>_score in [0, 1]
# (null where the check did not run) and is_<check>_issue.
CHECKS = (
    "unreadable",
    "exact_duplicate",
    "near_duplicate",
    "conflicting_label",
    "blur",
    "dark",
    "light",
    "odd_size",
    "label",
)
SCORED_CHECKS = ("blur", "dark", "light", "odd_size")
# the issues-manifest column holding each duplicate check's group id
GROUP_COLUMNS = {"exact_duplicate": "exact_dup_group", "near_duplicate": "near_dup_group"}

ISSUE_FIELDS = [
    pa.field("pixel_sha256", pa.string()),
    pa.field("perceptual_hash", pa.uint64()),
    pa.field("sharpness", pa.float64()),
    pa.field("exact_dup_group", pa.int32()),
    pa.field("near_dup_group", pa.int32()),
    *[pa.field(f"{check}_score", pa.float64()) for check in SCORED_CHECKS],
    pa.field("label_quality", pa.float64()),  # Cleanlab's score of the given label(s)
    pa.field("suggested_label", pa.string()),  # multilabel: labels joined by ';' ('' = good)
    pa.field("is_suggestion_confident", pa.bool_(), nullable=False),
    *[pa.field(f"is_{check}_issue", pa.bool_(), nullable=False) for check in CHECKS[1:]],
    pa.field("action", pa.string(), nullable=False),  # keep | flag | relabel | remove
    pa.field("reason", pa.string()),
    pa.field("override", pa.string()),  # the reviewer's decision that set the action, if any
]

SCHEMAS: dict[str, pa.Schema] = {
    # ingest output and clean output: one row per image
    "images": pa.schema(IMAGE_FIELDS),
    # clean's record of every input image, every check, and the action taken
    "issues": pa.schema(IMAGE_FIELDS + ISSUE_FIELDS),
    # split output: the cleaned images with their side
    "split": pa.schema(
        [
            *IMAGE_FIELDS,
            pa.field("split", pa.string(), nullable=False),
            pa.field("fold", pa.int32()),  # with split.folds: the row's fold; null for test
        ]
    ),
    # evaluate output: val and test images with the model's scores and decisions
    "predictions": pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("label", pa.string()),
            pa.field("labels", pa.list_(pa.string()), nullable=False),
            # one score per model output, in output order: every class (multiclass; softmax)
            # or every defect class (multilabel; sigmoid), as the metadata's classes list them
            pa.field("scores", pa.list_(pa.float32()), nullable=False),
            pa.field("predicted", pa.string(), nullable=False),  # as trained (argmax / 0.5)
            pa.field("decision", pa.string(), nullable=False),  # at the operating point
        ]
    ),
}


class ManifestError(ApexLoopError):
    """A manifest file is missing, unreadable, or does not match its schema."""


@dataclass(frozen=True)
class TaskInfo:
    """What the labels mean; travels in every manifest's metadata."""

    task: str
    classes: tuple[str, ...]
    good_class: str

    @property
    def defect_classes(self) -> tuple[str, ...]:
        return tuple(name for name in self.classes if name != self.good_class)

    def row_classes(self, row: Mapping[str, Any]) -> list[str]:
        """The class of a multiclass row; the defects (or the good class) of a multilabel row."""
        if self.task == "multiclass":
            return [row["label"]]
        return list(row["labels"]) or [self.good_class]


def write_manifest(path: Path, rows: list[dict[str, Any]], kind: str, info: TaskInfo) -> None:
    """Validate `rows` against the `kind` schema and write them atomically with metadata."""
    schema = SCHEMAS[kind]
    missing = [name for name in schema.names if rows and name not in rows[0]]
    if missing:
        raise ManifestError(f"{path}: rows for a '{kind}' manifest lack columns {missing}")
    meta = {"schema": kind, "version": SCHEMA_VERSION, **asdict(info)}
    schema = schema.with_metadata({_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ManifestError(f"{path}: rows do not match the '{kind}' schema: {exc}") from None
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def _check_schema(path: Path, actual: pa.Schema, kind: str) -> None:
    expected = SCHEMAS[kind]
    missing = sorted(set(expected.names) - set(actual.names))
    extra = sorted(set(actual.names) - set(expected.names))
    if missing or extra:
        raise ManifestError(
            f"{path}: not a valid '{kind}' manifest: missing columns {missing}, "
            f"unexpected columns {extra}"
        )
    for field in expected:
        got = actual.field(field.name).type
        if got != field.type:
            raise ManifestError(
                f"{path}: column '{field.name}' has type {got}, expected {field.type}"
            )


def read_meta(path: Path, kind: str) -> TaskInfo:
    """Read and check only the schema and metadata of a manifest."""
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found; run the stage that writes it") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(
            f"{path}: not a readable parquet manifest ({exc}); delete it and rerun its stage"
        ) from None
    raw = (schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise ManifestError(f"{path}: no ApexLoop metadata; it was not written by this pipeline")
    meta = json.loads(raw)
    if meta.get("version") != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema version {meta.get('version')} but this code reads version "
            f"{SCHEMA_VERSION}; rerun the stage that writes it (dvc repro)"
        )
    if meta.get("schema") != kind:
        raise ManifestError(f"{path}: is a '{meta.get('schema')}' manifest, expected '{kind}'")
    _check_schema(path, schema, kind)
    return TaskInfo(meta["task"], tuple(meta["classes"]), meta["good_class"])


def read_manifest(path: Path, kind: str) -> tuple[list[dict[str, Any]], TaskInfo]:
    """Read a manifest's rows, after checking its version, kind, columns and types."""
    info = read_meta(path, kind)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(
            f"{path}: corrupted manifest ({exc}); delete it and rerun its stage"
        ) from None
    return table.to_pylist(), info
