"""Tests of stages.clean through its CLI, on tiny crafted images ingested by the real ingest stage.

The crafted set (19 rows in the annotation table, listed in reverse path order). Every image is
48x48 unless said otherwise and, unless said otherwise, a texture of its own seed (random cells,
upscaled), so unrelated images are far apart in perceptual hash:
  n_crack, n_good, n_scratch        three ordinary, unique images
  b1_copy, b2_orig (stain)          b1 is a byte-for-byte copy of b2
  r1_resaved, r2_orig (good)        r1 is r2 re-saved as PNG: same pixels, different bytes
  c1_scratch, c2_hole               identical pixels, different labels
  j1_orig.png, j2_jpeg.jpg (crack)  j2 is j1 re-encoded as JPEG (quality 90): near, not exact
  k1_good.png, k2_hole.jpg          k2 is k1 as JPEG, with another label: near and conflicting
  u_blurred (stain)                 a texture under a strong Gaussian blur
  d_dark (good)                     noise in grey levels 0..19
  l_light (scratch)                 noise in grey levels 236..255
  o_odd (crack)                     a 200x20 texture
  x1_empty, x2_empty (good)         zero-byte files: unreadable, and never duplicates of each other
Exact copies are also near duplicates (distance 0), so b2, c2 and r2 are near duplicates too.
The label-issue check (Cleanlab) is off here; it has tests of its own.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import REPO, table_source, write_params
from PIL import Image, ImageFilter, PngImagePlugin

from pipeline.manifest import CHECKS, IMAGE_FIELDS, read_manifest, write_manifest
from stages import clean, ingest

IMAGE_COLUMNS = [field.name for field in IMAGE_FIELDS]
SCORED = ("blur", "dark", "light", "odd_size")

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
    "j1_orig.png": "crack",
    "j2_jpeg.jpg": "crack",
    "k1_good.png": "good",
    "k2_hole.jpg": "hole",
    "u_blurred.png": "stain",
    "d_dark.png": "good",
    "l_light.png": "scratch",
    "o_odd.png": "crack",
    "x1_empty.png": "good",
    "x2_empty.png": "good",
}
# Of each duplicate group, the first path in sorted order is kept.
UNIQUE = {"n_crack.png", "n_good.png", "n_scratch.png"}
EXACT_COPIES = {"b2_orig.png", "r2_orig.png", "c2_hole.png"}
NEAR_COPIES = EXACT_COPIES | {"j2_jpeg.jpg", "k2_hole.jpg"}
CONFLICTS = {"c1_scratch.png", "c2_hole.png", "k1_good.png", "k2_hole.jpg"}
UNREADABLE = {"x1_empty.png", "x2_empty.png"}
SINGLE = {
    "blur": "u_blurred.png",
    "dark": "d_dark.png",
    "light": "l_light.png",
    "odd_size": "o_odd.png",
}
# The thresholds the crafted images were made for (the repository's params may move).
THRESHOLDS = {
    "working_size": 512,
    "hash": "phash",
    "near_duplicate_max_distance": 4,
    "near_duplicate_min_correlation": 0.4,
    "blur_absolute": 20.0,
    "blur_relative": 0.1,
    "dark_threshold": 0.85,
    "light_threshold": 0.9,
    "odd_size_min_side": 32,
    "odd_size_threshold": 0.75,
}
ACTIONS = {
    "exact_duplicate": "remove",
    "near_duplicate": "flag",
    "conflicting_label": "remove",
    "blur": "flag",
    "dark": "flag",
    "light": "flag",
    "odd_size": "flag",
    "label": "off",
}


def _texture(rng: np.random.Generator, size: tuple[int, int] = (48, 48)) -> Image.Image:
    """Random cells upscaled to `size` (width, height): edges and low-frequency structure."""
    cells = (max(2, size[1] // 4), max(2, size[0] // 4))  # (H, W) of the cell grid
    grid = rng.integers(0, 256, (*cells, 3), dtype=np.uint8)
    return Image.fromarray(grid, "RGB").resize(size, Image.Resampling.BICUBIC)


def _noise(rng: np.random.Generator, low: int, high: int) -> Image.Image:
    return Image.fromarray(rng.integers(low, high, (48, 48), dtype=np.uint8), "L")


def _make_images(images: Path, seed: int = 0) -> None:
    """Write the crafted set described in the module docstring."""
    rng = np.random.default_rng(seed)
    images.mkdir(parents=True)
    for name in ("n_crack.png", "n_good.png", "n_scratch.png", "b2_orig.png", "c1_scratch.png"):
        _texture(rng).save(images / name)
    shutil.copyfile(images / "b2_orig.png", images / "b1_copy.png")
    shutil.copyfile(images / "c1_scratch.png", images / "c2_hole.png")
    original = _texture(rng)
    original.save(images / "r2_orig.png", compress_level=1)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "re-saved by another tool")
    original.save(images / "r1_resaved.png", compress_level=9, pnginfo=info)
    for first, second in (("j1_orig.png", "j2_jpeg.jpg"), ("k1_good.png", "k2_hole.jpg")):
        original = _texture(rng)
        original.save(images / first)
        original.save(images / second, quality=90)
    _texture(rng).filter(ImageFilter.GaussianBlur(3)).save(images / "u_blurred.png")
    _noise(rng, 0, 20).save(images / "d_dark.png")
    _noise(rng, 236, 256).save(images / "l_light.png")
    _texture(rng, (200, 20)).save(images / "o_odd.png")
    (images / "x1_empty.png").write_bytes(b"")
    (images / "x2_empty.png").write_bytes(b"")


def _clean_section(changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Changes to the repo's clean section: THRESHOLDS and ACTIONS, then `changes`, whose
    `actions` entry changes single actions."""
    repo = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["clean"]
    changes = dict(changes or {})
    actions = {**repo["actions"], **ACTIONS, **changes.pop("actions", {})}
    return {**THRESHOLDS, **changes, "actions": actions}


def _write_params(
    path: Path, root: Path, changes: dict[str, Any] | None = None, task: str = "multiclass"
) -> Path:
    """The repo's params.yaml with ingest pointed at `root` (a table source) and clean changed."""
    return write_params(path, ingest=table_source(root, task), clean=_clean_section(changes))


def _write_table(root: Path, labels: dict[str, str]) -> None:
    # Reverse path order, so "first path in sorted order" is not also "first row of the table".
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        for name in sorted(labels, reverse=True):
            writer.writerow([name, labels[name], ""])


def _ingest(base: Path, root: Path, labels: dict[str, str], task: str = "multiclass") -> Path:
    _write_table(root, labels)
    manifest = base / "ingest.parquet"
    params = _write_params(base / "ingest.yaml", root, task=task)
    assert ingest.main(["--params", str(params), "--out", str(manifest)]) == 0
    return manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(root, ingest manifest) of the crafted set, produced by the real ingest CLI."""
    base = tmp_path_factory.mktemp("clean")
    root = base / "data"
    _make_images(root / "images")
    return root, _ingest(base, root, LABELS)


Result = tuple[dict[str, Any], dict[str, dict[str, Any]], list[dict[str, Any]]]


def _clean_argv(
    tmp_path: Path, dataset: tuple[Path, Path], changes: dict[str, Any] | None = None
) -> tuple[list[str], Path, Path, Path]:
    """The clean CLI's arguments for `dataset` with params changed by `changes`, all outputs in
    `tmp_path`; and where its cleaned manifest, issues manifest and metrics go."""
    root, manifest = dataset
    overrides = tmp_path / "overrides.csv"  # a review queue with no decisions
    overrides.write_text("path,decision\n", encoding="utf-8")
    params = _write_params(
        tmp_path / "params.yaml", root, {"overrides": str(overrides), **(changes or {})}
    )
    out, issues, metrics = (
        tmp_path / "clean.parquet",
        tmp_path / "issues.parquet",
        tmp_path / "m.json",
    )
    argv = ["--params", str(params), "--root", str(root), "--manifest", str(manifest)]
    argv += ["--out", str(out), "--issues", str(issues), "--metrics", str(metrics)]
    argv += ["--review", str(tmp_path / "review.html"), "--queue", str(tmp_path / "queue.csv")]
    return argv, out, issues, metrics


def _run_clean(
    tmp_path: Path, dataset: tuple[Path, Path], changes: dict[str, Any] | None = None
) -> Result:
    """Run the clean CLI; return (metrics JSON, issue rows by file name, cleaned rows)."""
    argv, out, issues, metrics = _clean_argv(tmp_path, dataset, changes)
    assert clean.main(argv) == 0
    issue_rows, _ = read_manifest(issues, "issues")
    cleaned, _ = read_manifest(out, "images")
    by_name = {Path(row["path"]).name: row for row in issue_rows}
    assert len(by_name) == len(issue_rows)
    return json.loads(metrics.read_text(encoding="utf-8")), by_name, cleaned


def _names(rows: dict[str, dict[str, Any]], action: str) -> set[str]:
    return {name for name, row in rows.items() if row["action"] == action}


def _found(rows: dict[str, dict[str, Any]], check: str) -> set[str]:
    return {name for name, row in rows.items() if row[f"is_{check}_issue"]}


def _counts(**nonzero: int) -> dict[str, int]:
    """A full per-class (or overall) counts dict: zero except `nonzero`."""
    keys = ("images", "removed", "flagged", *CHECKS)
    assert set(nonzero) <= set(keys)
    return {key: nonzero.get(key, 0) for key in keys}


def _issues(**nonzero: int) -> dict[str, int]:
    assert set(nonzero) <= set(CHECKS)
    return {check: nonzero.get(check, 0) for check in CHECKS}


def _pixels(path: Path, mode: str = "RGB") -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode))


def test_crafted_set_is_what_the_docstring_says(dataset: tuple[Path, Path]) -> None:
    # Guards the fixture itself: copies, re-saves and re-encodes are what they claim to be.
    images = dataset[0] / "images"
    assert (images / "b1_copy.png").read_bytes() == (images / "b2_orig.png").read_bytes()
    assert (images / "r1_resaved.png").read_bytes() != (images / "r2_orig.png").read_bytes()
    np.testing.assert_array_equal(
        _pixels(images / "r1_resaved.png"), _pixels(images / "r2_orig.png")
    )
    for first, second in (("j1_orig.png", "j2_jpeg.jpg"), ("k1_good.png", "k2_hole.jpg")):
        a, b = (_pixels(images / name, "L").astype(int) for name in (first, second))
        assert (a != b).any()  # lossy: not an exact duplicate ...
        assert np.abs(a - b).mean() < 4  # ... but the same picture
    assert np.asarray(Image.open(images / "d_dark.png")).max() < 20
    assert np.asarray(Image.open(images / "l_light.png")).min() >= 236
    assert Image.open(images / "o_odd.png").size == (200, 20)
    rows, _ = read_manifest(dataset[1], "images")
    assert [Path(row["path"]).name for row in rows] == sorted(LABELS)
    assert {Path(r["path"]).name for r in rows if r["is_unreadable_issue"]} == UNREADABLE


# What the default settings find in the crafted set, whatever the actions.
CRAFTED_FINDINGS = {
    "unreadable": 2,
    "exact_duplicate": 3,
    "near_duplicate": 5,
    "conflicting_label": 4,
    "blur": 1,
    "dark": 1,
    "light": 1,
    "odd_size": 1,
}


def test_default_actions_exact_counts(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    metrics, rows, cleaned = _run_clean(tmp_path, dataset)

    assert metrics["issues"] == _issues(**CRAFTED_FINDINGS)
    assert (metrics["images_in"], metrics["images_out"]) == (19, 11)
    assert (metrics["removed"], metrics["flagged"], metrics["relabelled"]) == (8, 5, 0)
    assert metrics["per_class"] == {
        # n_good, r1, r2, k1, d_dark, x1, x2
        "good": _counts(
            images=7,
            removed=4,
            flagged=1,
            unreadable=2,
            exact_duplicate=1,
            near_duplicate=1,
            conflicting_label=1,
            dark=1,
        ),
        # n_scratch, c1, l_light
        "scratch": _counts(images=3, removed=1, flagged=1, conflicting_label=1, light=1),
        # c2, k2
        "hole": _counts(
            images=2, removed=2, exact_duplicate=1, near_duplicate=2, conflicting_label=2
        ),
        # n_crack, j1, j2, o_odd
        "crack": _counts(images=4, flagged=2, near_duplicate=1, odd_size=1),
        # b1, b2, u_blurred
        "stain": _counts(
            images=3, removed=1, flagged=1, exact_duplicate=1, near_duplicate=1, blur=1
        ),
    }

    removed = UNREADABLE | EXACT_COPIES | CONFLICTS
    flagged = {"j2_jpeg.jpg", *SINGLE.values()}
    assert _names(rows, "remove") == removed
    assert _names(rows, "flag") == flagged
    assert _names(rows, "keep") == set(LABELS) - removed - flagged
    assert _names(rows, "keep") == UNIQUE | {"b1_copy.png", "r1_resaved.png", "j1_orig.png"}
    assert [Path(row["path"]).name for row in cleaned] == sorted(set(LABELS) - removed)


def test_each_check_finds_exactly_its_crafted_images(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    _, rows, _ = _run_clean(tmp_path, dataset)
    assert _found(rows, "unreadable") == UNREADABLE
    assert _found(rows, "exact_duplicate") == EXACT_COPIES
    assert _found(rows, "near_duplicate") == NEAR_COPIES
    assert _found(rows, "conflicting_label") == CONFLICTS
    for check, name in SINGLE.items():
        assert _found(rows, check) == {name}, check
    # Scores lie in [0, 1] for every readable image; the crafted ones pass their threshold.
    for name, row in rows.items():
        for check in SCORED:
            score = row[f"{check}_score"]
            assert (score is None) == (name in UNREADABLE)
            assert score is None or 0.0 <= score <= 1.0
    assert rows["u_blurred.png"]["blur_score"] > 0.5
    assert rows["d_dark.png"]["dark_score"] >= 0.85
    assert rows["l_light.png"]["light_score"] >= 0.9
    assert rows["o_odd.png"]["odd_size_score"] == pytest.approx(0.9)  # 1 - 20/200


def test_every_input_image_has_an_issue_row_and_every_non_keep_a_reason(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    changes = {"actions": {"exact_duplicate": "flag", "blur": "remove"}}
    _, rows, _ = _run_clean(tmp_path, dataset, changes)
    actions = {**ACTIONS, **changes["actions"]}
    assert set(rows) == set(LABELS)
    for name, row in rows.items():
        found = [check for check in CHECKS[1:] if row[f"is_{check}_issue"]]
        if row["is_unreadable_issue"]:
            assert row["action"] == "remove"
            assert "zero-byte" in row["reason"]
        elif not found:
            assert (row["action"], row["reason"]) == ("keep", None), name
        else:
            taken = {actions[check] for check in found}
            assert row["action"] == ("remove" if "remove" in taken else "flag"), name
            for check in CHECKS[1:]:  # the reason names every finding with its action
                assert (f"{check} ({actions[check]})" in row["reason"]) == (check in found)
    assert rows["b2_orig.png"]["action"] == "flag"  # exact copy (flag) + near copy (flag)
    assert rows["c2_hole.png"]["action"] == "remove"  # exact copy (flag) + conflict (remove)
    assert rows["u_blurred.png"]["action"] == "remove"


def test_duplicates_are_found_by_pixels_and_first_sorted_path_is_kept(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    _, rows, _ = _run_clean(tmp_path, dataset)
    for first, second in [
        ("b1_copy.png", "b2_orig.png"),
        ("c1_scratch.png", "c2_hole.png"),
        ("r1_resaved.png", "r2_orig.png"),
    ]:
        a, b = rows[first], rows[second]
        assert a["pixel_sha256"] == b["pixel_sha256"] is not None
        assert a["perceptual_hash"] == b["perceptual_hash"] is not None
        assert a["exact_dup_group"] == b["exact_dup_group"] is not None
        assert (a["is_exact_duplicate_issue"], b["is_exact_duplicate_issue"]) == (False, True)
    # The re-saved copy is a different file but the same picture.
    assert rows["r1_resaved.png"]["sha256"] != rows["r2_orig.png"]["sha256"]
    # Groups are numbered in manifest (sorted path) order: b, c, r.
    exact = {name: row["exact_dup_group"] for name, row in rows.items()}
    assert {name: group for name, group in exact.items() if group is not None} == {
        "b1_copy.png": 0,
        "b2_orig.png": 0,
        "c1_scratch.png": 1,
        "c2_hole.png": 1,
        "r1_resaved.png": 2,
        "r2_orig.png": 2,
    }
    # Zero-byte files have equal file hashes but no pixels: never grouped as duplicates.
    assert rows["x1_empty.png"]["sha256"] == rows["x2_empty.png"]["sha256"]
    for name in UNREADABLE:
        row = rows[name]
        assert row["pixel_sha256"] is row["perceptual_hash"] is row["sharpness"] is None
        assert row["exact_dup_group"] is row["near_dup_group"] is None
        assert not any(row[f"is_{check}_issue"] for check in CHECKS[1:])


def test_near_duplicates_are_grouped_and_first_sorted_path_is_kept(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    _, rows, _ = _run_clean(tmp_path, dataset)
    near = {name: row["near_dup_group"] for name, row in rows.items()}
    assert {name: group for name, group in near.items() if group is not None} == {
        "b1_copy.png": 0,
        "b2_orig.png": 0,
        "c1_scratch.png": 1,
        "c2_hole.png": 1,
        "j1_orig.png": 2,
        "j2_jpeg.jpg": 2,
        "k1_good.png": 3,
        "k2_hole.jpg": 3,
        "r1_resaved.png": 4,
        "r2_orig.png": 4,
    }
    # A JPEG re-encode is near (within 4 bits) but not exact.
    for first, second in (("j1_orig.png", "j2_jpeg.jpg"), ("k1_good.png", "k2_hole.jpg")):
        a, b = rows[first], rows[second]
        assert a["pixel_sha256"] != b["pixel_sha256"]
        assert (a["perceptual_hash"] ^ b["perceptual_hash"]).bit_count() <= 4
        assert a["exact_dup_group"] is b["exact_dup_group"] is None
        assert (a["is_near_duplicate_issue"], b["is_near_duplicate_issue"]) == (False, True)
    # Images near-identical to nothing are in no group, the checked ones included.
    for name in UNIQUE | set(SINGLE.values()):
        assert rows[name]["near_dup_group"] is None, name
        assert not rows[name]["is_near_duplicate_issue"]
        assert not rows[name]["is_conflicting_label_issue"]


def _surface(base: np.ndarray, seed: int) -> Image.Image:
    """`base` (the shape and lighting of a kind of part) with one part's own fine grain."""
    grain = np.random.default_rng(seed).normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8), "L")


def test_a_hash_match_is_a_near_duplicate_only_if_the_texture_agrees(tmp_path: Path) -> None:
    """Two parts of one kind, shot alike, share their perceptual hash but not their surface;
    a shifted copy of one shares both."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(2)
    cells = rng.integers(60, 200, (6, 6), dtype=np.uint8)
    base = np.asarray(Image.fromarray(cells).resize((96, 96), Image.Resampling.BICUBIC), float)
    _surface(base, 1).save(root / "images/s1_part.png")
    _surface(base, 2).save(root / "images/s2_other_part.png")
    moved = np.roll(np.asarray(_surface(base, 1)), (2, -1), axis=(0, 1))
    Image.fromarray(moved).save(root / "images/s3_copy_moved.png")
    names = ["s1_part.png", "s2_other_part.png", "s3_copy_moved.png"]
    dataset = (root, _ingest(tmp_path, root, dict.fromkeys(names, "good")))

    for run in ("checked", "unchecked"):
        (tmp_path / run).mkdir()
    whash = {"hash": "whash"}  # the repository's default hash (phash sees the pair as far)
    _, rows, _ = _run_clean(tmp_path / "checked", dataset, whash)
    hashes = [rows[name]["perceptual_hash"] for name in names]
    assert all((a ^ b).bit_count() <= 4 for a in hashes for b in hashes)  # all hash-near
    assert [rows[name]["near_dup_group"] for name in names] == [0, None, 0]
    assert _found(rows, "near_duplicate") == {"s3_copy_moved.png"}

    unchecked = {**whash, "near_duplicate_min_correlation": 0.0}  # the hash alone decides
    _, rows, _ = _run_clean(tmp_path / "unchecked", dataset, unchecked)
    assert [rows[name]["near_dup_group"] for name in names] == [0, 0, 0]


def test_first_sorted_path_is_kept_whatever_the_manifest_order(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    rows, info = read_manifest(dataset[1], "images")
    shuffled = tmp_path / "reversed.parquet"
    write_manifest(shuffled, rows[::-1], "images", info)
    _, issues, _ = _run_clean(tmp_path, (dataset[0], shuffled))
    assert _names(issues, "keep") == UNIQUE | {"b1_copy.png", "r1_resaved.png", "j1_orig.png"}
    assert _found(issues, "exact_duplicate") == EXACT_COPIES
    assert _found(issues, "near_duplicate") == NEAR_COPIES
    # Numbering follows the manifest order: the reversed manifest meets "r" first.
    assert issues["r2_orig.png"]["exact_dup_group"] == 0
    assert issues["r2_orig.png"]["near_dup_group"] == 0


def test_conflicting_labels_in_exact_and_near_groups_are_all_removed(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    _, rows, _ = _run_clean(tmp_path, dataset)
    assert _found(rows, "conflicting_label") == CONFLICTS
    assert {rows[name]["action"] for name in CONFLICTS} == {"remove"}
    # The near pair with the same label is no conflict.
    assert not rows["j1_orig.png"]["is_conflicting_label_issue"]
    assert not rows["j2_jpeg.jpg"]["is_conflicting_label_issue"]


def test_conflicting_label_flag_keeps_both_sides(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    metrics, rows, cleaned = _run_clean(
        tmp_path, dataset, {"actions": {"conflicting_label": "flag"}}
    )
    # c2 is also an exact copy, which is still removed.
    assert _names(rows, "remove") == UNREADABLE | EXACT_COPIES
    assert _names(rows, "flag") == {
        "c1_scratch.png",
        "k1_good.png",
        "k2_hole.jpg",
        "j2_jpeg.jpg",
        *SINGLE.values(),
    }
    assert (metrics["images_out"], metrics["removed"], metrics["flagged"]) == (14, 5, 8)
    assert metrics["issues"]["conflicting_label"] == 4
    kept = {Path(row["path"]).name for row in cleaned}
    assert {"c1_scratch.png", "k1_good.png", "k2_hole.jpg"} <= kept


def test_exact_duplicate_flag_keeps_the_copies(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    metrics, rows, cleaned = _run_clean(tmp_path, dataset, {"actions": {"exact_duplicate": "flag"}})
    assert _names(rows, "flag") == {"b2_orig.png", "r2_orig.png", "j2_jpeg.jpg", *SINGLE.values()}
    # Conflicts are still removed: flagging copies does not resolve a label disagreement.
    assert _names(rows, "remove") == UNREADABLE | CONFLICTS
    assert (metrics["images_out"], metrics["removed"], metrics["flagged"]) == (13, 6, 7)
    assert metrics["issues"]["exact_duplicate"] == 3
    assert {"b1_copy.png", "b2_orig.png", "r1_resaved.png", "r2_orig.png"} <= {
        Path(row["path"]).name for row in cleaned
    }


def test_remove_actions_remove(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    changes = {"actions": dict.fromkeys(("near_duplicate", *SCORED), "remove")}
    metrics, rows, cleaned = _run_clean(tmp_path, dataset, changes)
    removed = UNREADABLE | NEAR_COPIES | CONFLICTS | set(SINGLE.values())
    assert _names(rows, "remove") == removed
    assert _names(rows, "flag") == set()
    assert (metrics["removed"], metrics["flagged"], metrics["images_out"]) == (13, 0, 6)
    assert {Path(row["path"]).name for row in cleaned} == set(LABELS) - removed
    # The counts of findings do not depend on the action.
    assert metrics["issues"] == _issues(**CRAFTED_FINDINGS)


def test_checks_that_are_off_leave_null_scores_and_never_flag(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    changes = {"actions": dict.fromkeys(("near_duplicate", *SCORED), "off")}
    metrics, rows, _ = _run_clean(tmp_path, dataset, changes)
    for name, row in rows.items():
        assert row["near_dup_group"] is None, name
        for check in SCORED:
            assert row[f"{check}_score"] is None, (name, check)
    # Without near groups the JPEG pair k1/k2 no longer conflicts; the exact pair c1/c2 does.
    assert metrics["issues"] == _issues(unreadable=2, exact_duplicate=3, conflicting_label=2)
    assert _names(rows, "remove") == UNREADABLE | EXACT_COPIES | {"c1_scratch.png"}
    assert _names(rows, "flag") == set()
    # Features are still recorded: off is about the check, not the decode.
    assert rows["u_blurred.png"]["sharpness"] is not None


@pytest.mark.parametrize(
    ("absolute", "relative", "blurred"),
    [
        (20.0, 0.1, {"u_blurred.png"}),
        (0.0, 0.1, {"u_blurred.png"}),  # relative to its class alone
        (20.0, 0.0, {"u_blurred.png"}),  # absolute alone
        (0.0, 0.0, set()),  # no limit, no blur
    ],
)
def test_blur_is_absolute_or_relative(
    tmp_path: Path,
    dataset: tuple[Path, Path],
    absolute: float,
    relative: float,
    blurred: set[str],
) -> None:
    changes = {"blur_absolute": absolute, "blur_relative": relative}
    metrics, rows, _ = _run_clean(tmp_path, dataset, changes)
    assert _found(rows, "blur") == blurred
    assert metrics["issues"]["blur"] == len(blurred)


def test_blur_relative_is_to_the_image_own_class(tmp_path: Path) -> None:
    """The same texture is blurry among very sharp images of its class, not among its peers."""
    root = tmp_path / "data"
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(9)
    labels = {}
    for index in range(3):  # raw noise: Laplacian variance in the tens of thousands
        _noise(rng, 0, 256).save(images / f"crack_noise{index}.png")
        labels[f"crack_noise{index}.png"] = "crack"
        _texture(rng).save(images / f"good_texture{index}.png")  # a few hundred
        labels[f"good_texture{index}.png"] = "good"
    _texture(rng).save(images / "crack_texture.png")
    labels["crack_texture.png"] = "crack"
    manifest = _ingest(tmp_path, root, labels)
    changes = {"blur_absolute": 20.0, "blur_relative": 0.1}
    metrics, rows, _ = _run_clean(tmp_path, (root, manifest), changes)
    assert _found(rows, "blur") == {"crack_texture.png"}
    assert metrics["per_class"]["crack"]["blur"] == 1
    assert metrics["per_class"]["good"]["blur"] == 0


def test_workers_give_byte_identical_outputs(
    tmp_path_factory: pytest.TempPathFactory, dataset: tuple[Path, Path]
) -> None:
    outputs = []
    for workers in (1, 2):
        work = tmp_path_factory.mktemp(f"workers{workers}")
        _run_clean(work, dataset, {"workers": workers})
        outputs.append(
            [(work / name).read_bytes() for name in ("issues.parquet", "clean.parquet", "m.json")]
        )
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"actions": {"exact_duplicate": "flag"}},
        {"actions": {"conflicting_label": "flag"}},
        {"actions": {"exact_duplicate": "flag", "conflicting_label": "flag"}},
        {"actions": dict.fromkeys(("near_duplicate", *SCORED), "remove")},
        {"actions": dict.fromkeys(("near_duplicate", *SCORED), "off")},
    ],
)
def test_cleaned_manifest_is_exactly_the_kept_input_rows(
    tmp_path: Path, dataset: tuple[Path, Path], changes: dict[str, Any]
) -> None:
    metrics, rows, cleaned = _run_clean(tmp_path, dataset, changes)
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
        _texture(rng).save(images / name)
    shutil.copyfile(images / "a1.png", images / "a2.png")
    shutil.copyfile(images / "b1.png", images / "b2.png")
    labels = {"a1.png": "hole;scratch", "a2.png": "scratch;hole", "b1.png": "", "b2.png": "hole"}
    labels["c.png"] = "stain"
    manifest = _ingest(tmp_path, root, labels, task="multilabel")

    metrics, rows, cleaned = _run_clean(tmp_path, (root, manifest))
    assert {name: row["action"] for name, row in rows.items()} == {
        "a1.png": "keep",
        "a2.png": "remove",
        "b1.png": "remove",
        "b2.png": "remove",
        "c.png": "keep",
    }
    assert rows["a2.png"]["is_conflicting_label_issue"] is False
    assert metrics["issues"] == _issues(exact_duplicate=2, near_duplicate=2, conflicting_label=2)
    # A good multilabel image (no defects) counts under the good class; an image counts under
    # each of its defects.
    assert metrics["per_class"] == {
        "good": _counts(images=1, removed=1, conflicting_label=1),
        "scratch": _counts(images=2, removed=1, exact_duplicate=1, near_duplicate=1),
        "hole": _counts(
            images=3,
            removed=2,
            exact_duplicate=2,
            near_duplicate=2,
            conflicting_label=1,
        ),
        "crack": _counts(),
        "stain": _counts(images=1),
    }
    assert Counter(tuple(row["labels"]) for row in cleaned) == {
        ("hole", "scratch"): 1,
        ("stain",): 1,
    }


def test_the_stage_without_label_issues_never_loads_torch_or_cleanlab(
    tmp_path: Path, dataset: tuple[Path, Path]
) -> None:
    # they take seconds to import and make every forked worker 1 GB; only that check needs them
    argv, _, _, metrics = _clean_argv(tmp_path, dataset, {"actions": {"label": "off"}})
    script = (
        "import sys\n"
        "from stages import clean\n"
        "assert clean.main(sys.argv[1:]) == 0\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'cleanlab', 'sklearn') "
        "if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads(metrics.read_text())["label_issues"]["skipped_reason"] == "check off"
