"""Manifests: schema validation on read, versioned metadata, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import manifest
from pipeline.manifest import ManifestError, TaskInfo, read_manifest, read_meta, write_manifest

INFO = TaskInfo("multiclass", ("good", "scratch"), "good")


def image_row(path: str, label: str = "good", **changes: Any) -> dict[str, Any]:
    row = {
        "path": path,
        "sha256": "0" * 64,
        "width": 8,
        "height": 6,
        "mode": "RGB",
        "format": "PNG",
        "label": label,
        "labels": [] if label == "good" else [label],
        "group": None,
        "boxes": [],
        "is_unreadable_issue": False,
        "unreadable_reason": None,
    }
    row.update(changes)
    return row


def test_round_trip_keeps_rows_and_task_info(tmp_path: Path) -> None:
    box = {"x0": 1.0, "y0": 2.0, "x1": 5.0, "y1": 6.0, "label": "scratch"}
    rows = [image_row("images/a.png"), image_row("images/b.png", "scratch", boxes=[box])]
    path = tmp_path / "m.parquet"
    write_manifest(path, rows, "images", INFO)
    back, info = read_manifest(path, "images")
    assert back == rows
    assert info == INFO
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]


def test_empty_manifest_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    write_manifest(path, [], "images", INFO)
    assert read_manifest(path, "images") == ([], INFO)


def rewrite(path: Path, table: pa.Table, meta: dict[str, Any] | None) -> None:
    metadata = {b"apexloop": json.dumps(meta).encode()} if meta is not None else None
    pq.write_table(table.replace_schema_metadata(metadata), path)


def valid_table(tmp_path: Path) -> tuple[pa.Table, dict[str, Any]]:
    path = tmp_path / "valid.parquet"
    write_manifest(path, [image_row("images/a.png")], "images", INFO)
    table = pq.read_table(path)
    return table, json.loads(table.schema.metadata[b"apexloop"])


def test_missing_and_extra_columns_name_the_file(tmp_path: Path) -> None:
    table, meta = valid_table(tmp_path)
    broken = tmp_path / "broken.parquet"
    rewrite(broken, table.drop_columns(["sha256"]).append_column("extra", pa.array([1])), meta)
    with pytest.raises(ManifestError) as err:
        read_manifest(broken, "images")
    assert str(broken) in str(err.value)
    assert "missing columns ['sha256']" in str(err.value)
    assert "unexpected columns ['extra']" in str(err.value)


def test_wrong_column_type(tmp_path: Path) -> None:
    table, meta = valid_table(tmp_path)
    broken = tmp_path / "broken.parquet"
    index = table.schema.get_field_index("width")
    rewrite(broken, table.set_column(index, "width", pa.array(["8"])), meta)
    with pytest.raises(ManifestError, match="column 'width' has type string"):
        read_manifest(broken, "images")


def test_version_mismatch_and_wrong_kind(tmp_path: Path) -> None:
    table, meta = valid_table(tmp_path)
    old = tmp_path / "old.parquet"
    rewrite(old, table, {**meta, "version": manifest.SCHEMA_VERSION + 1})
    with pytest.raises(ManifestError, match="schema version"):
        read_manifest(old, "images")
    with pytest.raises(ManifestError, match="is a 'images' manifest, expected 'split'"):
        read_manifest(tmp_path / "valid.parquet", "split")
    foreign = tmp_path / "foreign.parquet"
    rewrite(foreign, table, None)
    with pytest.raises(ManifestError, match="not written by this pipeline"):
        read_meta(foreign, "images")


def test_corrupted_and_missing_files(tmp_path: Path) -> None:
    good = tmp_path / "valid.parquet"
    valid_table(tmp_path)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ManifestError, match=r"truncated\.parquet"):
        read_manifest(truncated, "images")
    with pytest.raises(ManifestError, match="run the stage that writes it"):
        read_manifest(tmp_path / "absent.parquet", "images")


def test_rows_not_matching_the_schema_leave_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    write_manifest(path, [image_row("images/a.png")], "images", INFO)
    before = path.read_bytes()
    with pytest.raises(ManifestError, match="lack columns"):
        write_manifest(path, [{"path": "x"}], "images", INFO)
    with pytest.raises(ManifestError, match="do not match"):
        write_manifest(path, [image_row("images/b.png", width="wide")], "images", INFO)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]


def test_a_write_killed_midway_never_exposes_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulates a crash inside the parquet writer (cannot be produced otherwise in-process)."""
    path = tmp_path / "m.parquet"
    write_manifest(path, [image_row("images/a.png")], "images", INFO)
    before = path.read_bytes()

    def crash(table: pa.Table, where: Path) -> None:
        Path(where).write_bytes(b"PAR1 half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(manifest.pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(path, [image_row("images/b.png")], "images", INFO)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]
