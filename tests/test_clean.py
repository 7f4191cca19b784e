"""Tests of stages.clean through its CLI, on tiny crafted images ingested by the real ingest stage.

The crafted set (11 rows in the annotation table, listed in reverse path order):
  n_crack, n_good, n_scratch       three ordinary, unique images
  b1_copy, b2_orig (stain)         b1 is a byte-for-byte copy of b2
  r1_resaved, r2_orig (good)       r1 is r2 re-saved as PNG: same pixels, different bytes
  c1_scratch, c2_hole              identical pixels, different labels
  x1_empty, x2_empty (good)        zero-byte files: unreadable, and never duplicates of each other
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import table_source, write_params
from PIL import Image, PngImagePlugin

from pipeline.manifest import IMAGE_FIELDS, read_manifest, write_manifest
from stages import clean, ingest

REPO = Path(__file__).resolve().parents[1]
IMAGE_COLUMNS = [field.name for field in IMAGE_FIELDS]

LABELS = {
    "n_crack.png": "crack",
    "n_good.png": "good",
    "n_scratch.png": "scratch",
    "b1_copy.png": "stain",
    "b2_orig.png": "stain",
    "r1_resaved.png": "good",
    "r2_orig.png": "good",
    "c1_scratch.png": "scratch",
    "c2_hole.png": "hole",
    "x1_empty.png": "good",
    "x2_empty.png": "good",
}


def _noise(rng: np.random.Generator, size: int = 12) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def _make_images(images: Path, seed: int = 0) -> None:
    """Write the crafted set described in the module docstring."""
    rng = np.random.default_rng(seed)
    images.mkdir(parents=True)
    for name in ("n_crack.png", "n_good.png", "n_scratch.png", "b2_orig.png", "c1_scratch.png"):
        _noise(rng).save(images / name)
    shutil.copyfile(images / "b2_orig.png", images / "b1_copy.png")
    original = _noise(rng)
    original.save(images / "r2_orig.png", compress_level=1)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "re-saved by another tool")
    original.save(images / "r1_resaved.png", compress_level=9, pnginfo=info)
    shutil.copyfile(images / "c1_scratch.png", images / "c2_hole.png")
    (images / "x1_empty.png").write_bytes(b"")
    (images / "x2_empty.png").write_bytes(b"")


def _write_params(
    path: Path, root: Path, clean_section: dict[str, str] | None = None, task: str = "multiclass"
) -> Path:
    """The repo's params.yaml with ingest pointed at `root` (a table source) and clean changed."""
    return write_params(path, ingest=table_source(root, task), clean=clean_section or {})


def _write_table(root: Path, labels: dict[str, str]) -> None:
    # Reverse path order, so "first path in sorted order" is not also "first row of the table".
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        for name in sorted(labels, reverse=True):
            writer.writerow([name, labels[name], ""])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(root, ingest manifest) of the crafted set, produced by the real ingest CLI."""
    base = tmp_path_factory.mktemp("clean")
    root = base / "data"
    _make_images(root / "images")
    _write_table(root, LABELS)
    manifest = base / "ingest.parquet"
    params = _write_params(base / "params.yaml", root)
    assert ingest.main(["--params", str(params), "--out", str(manifest)]) == 0
    return root, manifest


def _run_clean(
    tmp_path: Path, dataset: tuple[Path, Path], clean_section: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Run the clean CLI; return (metrics JSON, issue rows by file name, cleaned rows)."""
    root, manifest = dataset
    params = _write_params(tmp_path / "params.yaml", root, clean_section)
    out, issues, metrics = (
        tmp_path / "clean.parquet",
        tmp_path / "issues.parquet",
        tmp_path / "m.json",
    )
    argv = ["--params", str(params), "--root", str(root), "--manifest", str(manifest)]
    argv += ["--out", str(out), "--issues", str(issues), "--metrics", str(metrics)]
    assert clean.main(argv) == 0
    issue_rows, _ = read_manifest(issues, "issues")
    cleaned, _ = read_manifest(out, "images")
    by_name = {Path(row["path"]).name: row for row in issue_rows}
    assert len(by_name) == len(issue_rows)
    return json.loads(metrics.read_text(encoding="utf-8")), by_name, cleaned


def _names(rows: dict[str, dict[str, Any]], action: str) -> set[str]:
    return {name for name, row in rows.items() if row["action"] == action}


def test_crafted_set_is_what_the_docstring_says(dataset: tuple[Path, Path]) -> None:
    # Guards the fixture itself: the re-saved copy must differ in bytes, the byte copy must not.
    images = dataset[0] / "images"
    assert (images / "b1_copy.png").read_bytes() == (images / "b2_orig.png").read_bytes()
    assert (images / "r1_resaved.png").read_bytes() != (images / "r2_orig.png").read_bytes()
    rows, _ = read_manifest(dataset[1], "images")
    assert [Path(row["path"]).name for row in rows] == sorted(LABELS)
    assert {Path(r["path"]).name for r in rows if r["is_unreadable_issue"]} == {
        "x1_empty.png",
        "x2_empty.png",
    }


def test_default_actions_remove_copies_conflicts_and_unreadable(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    metrics, rows, cleaned = _run_clean(tmp_path, dataset)

    assert metrics["images_in"] == 11
    assert metrics["images_out"] == 5
    assert metrics["removed"] == 6
    # The second member of the conflicting pair is also a pixel copy of the first.
    assert metrics["issues"] == {"unreadable": 2, "exact_duplicate": 3, "conflicting_label": 2}
    assert metrics["per_class"] == {
        "good": {"images": 5, "removed": 3},
        "scratch": {"images": 2, "removed": 1},
        "hole": {"images": 1, "removed": 1},
        "crack": {"images": 1, "removed": 0},
        "stain": {"images": 2, "removed": 1},
    }

    kept = {"n_crack.png", "n_good.png", "n_scratch.png", "b1_copy.png", "r1_resaved.png"}
    assert _names(rows, "keep") == kept
    assert _names(rows, "remove") == set(LABELS) - kept
    assert _names(rows, "flag") == set()
    assert [Path(row["path"]).name for row in cleaned] == sorted(kept)


def test_every_input_image_has_an_issue_row_and_every_non_keep_a_reason(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    _, rows, _ = _run_clean(tmp_path, dataset, {"exact_duplicate_action": "flag"})
    assert set(rows) == set(LABELS)
    for name, row in rows.items():
        if row["action"] == "keep":
            assert row["reason"] is None, name
        else:
            assert row["reason"], name
    assert "zero-byte" in rows["x1_empty.png"]["reason"]
    assert "exact duplicate" in rows["b2_orig.png"]["reason"]
    assert "different labels" in rows["c1_scratch.png"]["reason"]


def test_duplicates_are_found_by_pixels_and_first_sorted_path_is_kept(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    _, rows, _ = _run_clean(tmp_path, dataset)
    for first, second in [
        ("b1_copy.png", "b2_orig.png"),
        ("r1_resaved.png", "r2_orig.png"),
        ("c1_scratch.png", "c2_hole.png"),
    ]:
        a, b = rows[first], rows[second]
        assert a["pixel_sha256"] == b["pixel_sha256"] is not None
        assert a["exact_duplicate_group"] == b["exact_duplicate_group"] is not None
        assert (a["is_exact_duplicate_issue"], b["is_exact_duplicate_issue"]) == (False, True)
    # The re-saved copy is a different file but the same picture.
    assert rows["r1_resaved.png"]["sha256"] != rows["r2_orig.png"]["sha256"]
    groups = [row["exact_duplicate_group"] for row in rows.values()]
    assert sorted(g for g in groups if g is not None) == [0, 0, 1, 1, 2, 2]
    # Zero-byte files have equal file hashes but no pixels: never grouped as duplicates.
    assert rows["x1_empty.png"]["sha256"] == rows["x2_empty.png"]["sha256"]
    for name in ("x1_empty.png", "x2_empty.png"):
        assert rows[name]["pixel_sha256"] is None
        assert rows[name]["exact_duplicate_group"] is None
        assert rows[name]["is_exact_duplicate_issue"] is False
    for name in ("n_crack.png", "n_good.png", "n_scratch.png"):
        assert rows[name]["exact_duplicate_group"] is None
        assert not rows[name]["is_exact_duplicate_issue"]
        assert not rows[name]["is_conflicting_label_issue"]


def test_first_sorted_path_is_kept_whatever_the_manifest_order(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    rows, info = read_manifest(dataset[1], "images")
    shuffled = tmp_path / "reversed.parquet"
    write_manifest(shuffled, rows[::-1], "images", info)
    _, issues, _ = _run_clean(tmp_path, (dataset[0], shuffled))
    assert _names(issues, "keep") == {
        "n_crack.png",
        "n_good.png",
        "n_scratch.png",
        "b1_copy.png",
        "r1_resaved.png",
    }
    assert issues["b2_orig.png"]["is_exact_duplicate_issue"] is True
    assert issues["b1_copy.png"]["is_exact_duplicate_issue"] is False


def test_conflicting_labels_are_all_removed(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    _, rows, _ = _run_clean(tmp_path, dataset)
    conflicting = {name for name, row in rows.items() if row["is_conflicting_label_issue"]}
    assert conflicting == {"c1_scratch.png", "c2_hole.png"}
    assert {rows[name]["action"] for name in conflicting} == {"remove"}


def test_conflicting_label_flag_keeps_both_sides(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    metrics, rows, cleaned = _run_clean(tmp_path, dataset, {"conflicting_label_action": "flag"})
    assert _names(rows, "flag") == {"c1_scratch.png", "c2_hole.png"}
    assert _names(rows, "remove") == {"b2_orig.png", "r2_orig.png", "x1_empty.png", "x2_empty.png"}
    assert (metrics["images_out"], metrics["removed"]) == (7, 4)
    assert {"c1_scratch.png", "c2_hole.png"} <= {Path(row["path"]).name for row in cleaned}


def test_exact_duplicate_flag_keeps_the_copies(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    metrics, rows, cleaned = _run_clean(tmp_path, dataset, {"exact_duplicate_action": "flag"})
    assert _names(rows, "flag") == {"b2_orig.png", "r2_orig.png"}
    # Conflicts are still removed: flagging copies does not resolve a label disagreement.
    assert _names(rows, "remove") == {
        "c1_scratch.png",
        "c2_hole.png",
        "x1_empty.png",
        "x2_empty.png",
    }
    assert (metrics["images_out"], metrics["removed"]) == (7, 4)
    assert metrics["issues"] == {"unreadable": 2, "exact_duplicate": 3, "conflicting_label": 2}
    assert {"b1_copy.png", "b2_orig.png", "r1_resaved.png", "r2_orig.png"} <= {
        Path(row["path"]).name for row in cleaned
    }


@pytest.mark.parametrize(
    "clean_section",
    [
        {},
        {"exact_duplicate_action": "flag"},
        {"conflicting_label_action": "flag"},
        {"exact_duplicate_action": "flag", "conflicting_label_action": "flag"},
    ],
)
def test_cleaned_manifest_is_exactly_the_kept_input_rows(
    tmp_path: Path, dataset: tuple[Path, Path], clean_section: dict[str, str]
) -> None:
    metrics, rows, cleaned = _run_clean(tmp_path, dataset, clean_section)
    inputs, info_in = read_manifest(dataset[1], "images")
    not_removed = {name for name, row in rows.items() if row["action"] != "remove"}
    expected = [row for row in inputs if Path(row["path"]).name in not_removed]
    assert cleaned == expected
    assert metrics["images_out"] == len(cleaned)
    assert metrics["removed"] == len(inputs) - len(cleaned)
    _, info_out = read_manifest(tmp_path / "clean.parquet", "images")
    assert info_out == info_in
    assert not any(row["is_unreadable_issue"] for row in cleaned)
    # Issue rows carry the input row unchanged next to the findings.
    by_path = {row["path"]: row for row in inputs}
    for row in rows.values():
        assert {name: row[name] for name in IMAGE_COLUMNS} == by_path[row["path"]]


def test_multilabel_conflict_is_a_different_label_set(tmp_path: Path) -> None:
    """Multilabel: identical pixels with the same defect set are copies, different sets conflict."""
    root = tmp_path / "data"
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name in ("a1.png", "b1.png", "c.png"):
        _noise(rng).save(images / name)
    shutil.copyfile(images / "a1.png", images / "a2.png")
    shutil.copyfile(images / "b1.png", images / "b2.png")
    labels = {"a1.png": "hole;scratch", "a2.png": "scratch;hole", "b1.png": "", "b2.png": "hole"}
    labels["c.png"] = "stain"
    _write_table(root, labels)
    params = _write_params(tmp_path / "ingest.yaml", root, task="multilabel")
    manifest = tmp_path / "ingest.parquet"
    assert ingest.main(["--params", str(params), "--out", str(manifest)]) == 0

    metrics, rows, cleaned = _run_clean(tmp_path, (root, manifest))
    assert {name: row["action"] for name, row in rows.items()} == {
        "a1.png": "keep",
        "a2.png": "remove",
        "b1.png": "remove",
        "b2.png": "remove",
        "c.png": "keep",
    }
    assert rows["a2.png"]["is_conflicting_label_issue"] is False
    assert metrics["issues"] == {"unreadable": 0, "exact_duplicate": 2, "conflicting_label": 2}
    # A good multilabel image (no defects) counts under the good class.
    per_class = metrics["per_class"]
    assert set(per_class) == {"good", "scratch", "hole", "crack", "stain"}
    assert per_class["good"] == {"images": 1, "removed": 1}
    assert per_class["scratch"] == {"images": 2, "removed": 1}
    assert per_class["hole"] == {"images": 3, "removed": 2}
    assert per_class["stain"] == {"images": 1, "removed": 0}
    assert per_class["crack"].get("images", 0) == 0
    assert Counter(tuple(row["labels"]) for row in cleaned) == {
        ("hole", "scratch"): 1,
        ("stain",): 1,
    }
