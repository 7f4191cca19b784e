"""Tests of pipeline.synth: the synthetic inspection data set and its planted faults."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.synth import CLASSES, FAULTS, GOOD_CLASS, IMAGE_SIZE, generate

COUNT = 150
DEFECTS = [c for c in CLASSES if c != GOOD_CLASS]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)  # (H, W, 3)


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("synth") / "mc"
    return out, generate(out, count=COUNT, seed=3, multilabel=False)


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("synth") / "ml"
    return out, generate(out, count=COUNT, seed=4, multilabel=True)


def _truth(root: Path) -> dict[str, dict[str, str]]:
    return {row["path"]: row for row in _read_csv(root / "truth.csv")}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", count=60, seed=11, multilabel=False)
    second = generate(tmp_path / "b", count=60, seed=11, multilabel=False)
    generate(tmp_path / "c", count=60, seed=12, multilabel=False)
    files_a, files_b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    files_c = _all_files(tmp_path / "c")
    assert first == second
    assert files_a == files_b
    assert files_a["labels.csv"] != files_c["labels.csv"]
    shared = set(files_a) & set(files_c) - {"README.md"}
    assert any(files_a[name] != files_c[name] for name in shared)


def test_files_and_tables_agree(multiclass: tuple[Path, dict[str, int]]) -> None:
    root, _ = multiclass
    labels, truth = _read_csv(root / "labels.csv"), _read_csv(root / "truth.csv")
    on_disk = sorted(
        p.relative_to(root / "images").as_posix() for p in (root / "images").rglob("*.*")
    )
    assert list(labels[0]) == ["path", "label", "group", "boxes"]
    assert list(truth[0]) == ["path", "true_label", "recorded_label", "fault", "source"]
    assert [row["path"] for row in labels] == on_disk  # one row per file, sorted by path
    assert [row["path"] for row in truth] == on_disk
    for label_row, truth_row in zip(labels, truth, strict=True):
        assert label_row["label"] == truth_row["recorded_label"]
        assert label_row["path"].split("/")[0] == label_row["label"]
        assert truth_row["fault"] in {"none", *FAULTS}
    assert "seed 3" in (root / "README.md").read_text()


def test_class_proportions(multiclass: tuple[Path, dict[str, int]]) -> None:
    root, _ = multiclass
    base = [r for r in _truth(root).values() if not r["fault"].endswith("duplicate")]
    counts = Counter(row["true_label"] for row in base)
    assert len(base) == COUNT
    assert 0.6 <= counts[GOOD_CLASS] / len(base) <= 0.8
    assert all(counts[defect] > 0 for defect in DEFECTS)
    assert counts["stain"] <= min(counts[c] for c in DEFECTS)  # the rarest class
    assert set(counts) <= set(CLASSES)


def test_boxes_are_tight_around_masks(multiclass: tuple[Path, dict[str, int]]) -> None:
    root, _ = multiclass
    truth = _truth(root)
    for row in _read_csv(root / "labels.csv"):
        facts = truth[row["path"]]
        boxes = json.loads(row["boxes"])
        mask_path = (root / "masks" / row["path"]).with_suffix(".png")
        if facts["fault"] == "corrupt":
            assert not mask_path.exists()
            continue
        with Image.open(mask_path) as mask_image:
            assert mask_image.mode == "L"
            mask = np.asarray(mask_image)  # (H, W)
        assert _pixels(root / "images" / row["path"]).shape[:2] == mask.shape
        assert set(np.unique(mask)) <= {0, 255}
        if facts["true_label"] == GOOD_CLASS:
            assert boxes == [] and not mask.any()
            continue
        assert len(boxes) == 1 and boxes[0][4] == facts["true_label"]
        x0, y0, x1, y1 = boxes[0][:4]
        assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE
        inside = mask[y0:y1, x0:x1]
        # tight: every edge row and column of the box touches the mask
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert mask.sum() == inside.sum()  # nothing outside the box


def test_defects_stand_out_from_their_surroundings(
    multiclass: tuple[Path, dict[str, int]],
) -> None:
    root, _ = multiclass
    contrasts: dict[str, list[float]] = {defect: [] for defect in DEFECTS}
    for row in _truth(root).values():
        if row["fault"] != "none" or row["true_label"] == GOOD_CLASS:
            continue
        grey = _pixels(root / "images" / row["path"]).mean(axis=2)  # (H, W)
        with Image.open((root / "masks" / row["path"]).with_suffix(".png")) as mask_image:
            mask = np.asarray(mask_image) > 0
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((11, 11), np.uint8)).astype(bool) & ~mask
        # mean deviation from the surroundings (a hole is dark inside a bright rim)
        contrasts[row["true_label"]].append(np.abs(grey[mask] - grey[ring].mean()).mean())
    for defect, values in contrasts.items():
        assert values, defect
        assert min(values) > 10, (defect, min(values))


def test_parts_have_one_to_three_shots_and_duplicates_get_new_parts(
    multiclass: tuple[Path, dict[str, int]],
) -> None:
    root, _ = multiclass
    truth = _truth(root)
    groups = {row["path"]: row["group"] for row in _read_csv(root / "labels.csv")}
    sizes = Counter(groups.values())
    base = [p for p, r in truth.items() if not r["fault"].endswith("duplicate")]
    base_sizes = Counter(groups[p] for p in base)
    assert set(base_sizes.values()) <= {1, 2, 3} and max(base_sizes.values()) >= 2
    for path, row in truth.items():
        if row["fault"].endswith("duplicate"):
            assert sizes[groups[path]] == 1
            assert groups[path] != groups[row["source"]]
            assert truth[row["source"]]["fault"] == "none"  # sources are un-faulted


def _duplicate_rows(root: Path, fault: str) -> list[dict[str, str]]:
    rows = [row for row in _truth(root).values() if row["fault"] == fault]
    assert rows, f"no {fault} planted"
    return rows


def test_exact_duplicates_decode_to_source_pixels(multiclass: tuple[Path, dict[str, int]]) -> None:
    root, counts = multiclass
    truth = _truth(root)
    rows = _duplicate_rows(root, "exact_duplicate")
    assert len(rows) == counts["exact_duplicate"] >= 2
    same_bytes = []
    for row in rows:
        copy, source = root / "images" / row["path"], root / "images" / row["source"]
        assert np.array_equal(_pixels(copy), _pixels(source))
        assert row["true_label"] == truth[row["source"]]["true_label"]
        same_bytes.append(copy.read_bytes() == source.read_bytes())
    assert any(same_bytes) and not all(same_bytes)  # plain copies and re-saved copies


def test_near_duplicates_are_close_but_not_identical(
    multiclass: tuple[Path, dict[str, int]],
) -> None:
    root, counts = multiclass
    rows = _duplicate_rows(root, "near_duplicate")
    assert len(rows) == counts["near_duplicate"]
    assert any(row["path"].endswith(".jpg") for row in rows)
    for row in rows:
        near, source = (
            _pixels(root / "images" / row["path"]),
            _pixels(root / "images" / row["source"]),
        )
        assert near.shape == source.shape
        diff = np.abs(near - source).mean()
        assert 0 < diff < 12, (row["path"], diff)


def _sharpness(path: Path) -> float:
    grey = _pixels(path).mean(axis=2).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def test_blurred_images_are_much_less_sharp(multiclass: tuple[Path, dict[str, int]]) -> None:
    root, counts = multiclass
    truth = _truth(root).values()
    blurred = [_sharpness(root / "images" / r["path"]) for r in truth if r["fault"] == "blurred"]
    clean = [_sharpness(root / "images" / r["path"]) for r in truth if r["fault"] == "none"]
    assert len(blurred) == counts["blurred"] >= 1
    assert max(blurred) < 0.25 * float(np.median(clean))


def test_corrupt_files_do_not_decode(multiclass: tuple[Path, dict[str, int]]) -> None:
    root, counts = multiclass
    rows = [row for row in _truth(root).values() if row["fault"] == "corrupt"]
    assert len(rows) == counts["corrupt"] == 4
    sizes = []
    for row in rows:
        path = root / "images" / row["path"]
        sizes.append(path.stat().st_size)
        with pytest.raises((OSError, SyntaxError)), Image.open(path) as image:
            image.load()
    assert 0 in sizes


def test_flipped_labels_differ_and_other_labels_are_true(
    multiclass: tuple[Path, dict[str, int]],
) -> None:
    root, counts = multiclass
    truth = list(_truth(root).values())
    flipped = [row for row in truth if row["fault"] == "flipped_label"]
    assert len(flipped) == counts["flipped_label"]
    assert 0.05 * COUNT <= len(flipped) <= 0.15 * COUNT
    for row in truth:
        is_flipped = row["fault"] == "flipped_label"
        assert (row["true_label"] != row["recorded_label"]) == is_flipped, row
        assert row["recorded_label"] in CLASSES


def test_returned_counts_match_truth(multiclass: tuple[Path, dict[str, int]]) -> None:
    root, counts = multiclass
    planted = Counter(row["fault"] for row in _truth(root).values())
    assert counts == {fault: planted[fault] for fault in FAULTS}
    assert all(counts[fault] >= 1 for fault in FAULTS)


def test_multilabel_layout_and_label_sets(multilabel: tuple[Path, dict[str, int]]) -> None:
    root, counts = multilabel
    labels, truth = _read_csv(root / "labels.csv"), _truth(root)
    assert list(labels[0]) == ["path", "labels", "group", "boxes"]
    assert not (root / "masks").exists()
    sizes = []
    for row in labels:
        facts = truth[row["path"]]
        true = facts["true_labels"].split(";") if facts["true_labels"] else []
        recorded = row["labels"].split(";") if row["labels"] else []
        assert row["path"].startswith("all/") and row["labels"] == facts["recorded_labels"]
        assert recorded == sorted(set(recorded)) and len(true) <= 3
        assert sorted({box[4] for box in json.loads(row["boxes"])}) == true  # boxes: drawn defects
        changed = set(true) ^ set(recorded)
        assert len(changed) == (1 if facts["fault"] == "flipped_label" else 0)
        if not facts["fault"].endswith("duplicate"):
            sizes.append(len(true))
    assert 0.3 <= sizes.count(0) / len(sizes) <= 0.6
    assert sum(size >= 2 for size in sizes) > 0 and sizes.count(1) > sum(s >= 2 for s in sizes)
    assert counts["flipped_label"] == sum(r["fault"] == "flipped_label" for r in truth.values())


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not an empty directory"):
        generate(out, count=20, seed=0, multilabel=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_fills_empty_output_and_removes_stale_temp(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    stale = tmp_path / ".data.tmp"
    stale.mkdir()
    (stale / "junk.txt").write_text("left by a crashed run")
    generate(out, count=20, seed=0, multilabel=False)
    assert not stale.exists()
    assert not (out / "junk.txt").exists()
    assert (out / "labels.csv").is_file() and (out / "truth.csv").is_file()


def test_rejects_non_positive_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="count"):
        generate(tmp_path / "data", count=0, seed=0, multilabel=False)
    assert not (tmp_path / "data").exists()
