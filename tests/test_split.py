"""Tests of stages.split through its CLI, on tiny images run through the real ingest and clean."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import table_source, write_params
from PIL import Image

from pipeline.manifest import read_manifest
from stages import clean, ingest, split

CLASSES = ("good", "scratch", "hole", "crack", "stain")
SIDES = ("train", "val", "test")
# Per group: its label in the table (multiclass: the class; multilabel: defects joined by ';').
MULTICLASS_LABELS = list(CLASSES)
MULTILABEL_LABELS = ["", "scratch", "hole;scratch", "crack", "stain;crack"]


def _write_params(path: Path, root: Path, task: str, split_section: dict[str, Any]) -> Path:
    return write_params(path, ingest=table_source(root, task), split=split_section)


def _make_dataset(root: Path, labels: list[str], seed: int) -> None:
    """15 groups of 1, 2 or 3 images (3 groups per label), 6 ungrouped images and one byte copy."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    table: list[tuple[str, str, str]] = []
    for g in range(15):
        for k in range(1 + g % 3):
            table.append((f"g{g:02d}_{k}.png", labels[g % len(labels)], f"part-{g:02d}"))
    table += [(f"solo_{i}.png", labels[i % len(labels)], "") for i in range(6)]
    for name, _, _ in table:
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(images / name)
    # A copy that clean removes, so split must read clean's output, not ingest's.
    shutil.copyfile(images / "solo_0.png", images / "solo_0_copy.png")
    table.append(("solo_0_copy.png", labels[0], ""))
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows(table)


def _prepare(tmp_path: Path, task: str) -> tuple[Path, Path]:
    """Make the data set, run the real ingest and clean CLIs; return (params, cleaned)."""
    root = tmp_path / "data"
    _make_dataset(root, MULTICLASS_LABELS if task == "multiclass" else MULTILABEL_LABELS, seed=11)
    return _prepare_existing(tmp_path, root, task)


def _prepare_existing(tmp_path: Path, root: Path, task: str) -> tuple[Path, Path]:
    """Run the real ingest and clean CLIs on `root`; return (params file, cleaned manifest)."""
    params = _write_params(tmp_path / "params.yaml", root, task, {})
    ingested, cleaned = tmp_path / "ingest.parquet", tmp_path / "clean.parquet"
    assert ingest.main(["--params", str(params), "--out", str(ingested)]) == 0
    argv = ["--params", str(params), "--root", str(root), "--manifest", str(ingested)]
    argv += ["--out", str(cleaned), "--issues", str(tmp_path / "issues.parquet")]
    argv += ["--review", str(tmp_path / "review.html"), "--queue", str(tmp_path / "queue.csv")]
    assert clean.main([*argv, "--metrics", str(tmp_path / "clean.json")]) == 0
    return params, cleaned


def _run_split(params: Path, manifest: Path, out_dir: Path) -> int:
    out_dir.mkdir()
    return split.main(
        [
            "--params",
            str(params),
            "--manifest",
            str(manifest),
            "--issues",
            str(manifest.parent / "issues.parquet"),
            "--out",
            str(out_dir / "split.parquet"),
            "--metrics",
            str(out_dir / "split.json"),
        ]
    )


def _classes_of(row: dict[str, Any], task: str) -> list[str]:
    if task == "multiclass":
        return [row["label"]]
    return list(row["labels"]) or ["good"]


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_split_stage_assigns_every_cleaned_row_and_reports_it(tmp_path: Path, task: str) -> None:
    params, cleaned_path = _prepare(tmp_path, task)
    assert _run_split(params, cleaned_path, tmp_path / "a") == 0
    rows, info = read_manifest(tmp_path / "a" / "split.parquet", "split")
    cleaned, cleaned_info = read_manifest(cleaned_path, "images")
    assert info == cleaned_info
    assert info.task == task

    # Exactly the cleaned rows, in order, unchanged, each with one side.
    assert len(cleaned) == 36  # 30 grouped + 6 ungrouped (the copy is gone)
    assert [{k: v for k, v in row.items() if k not in ("split", "fold")} for row in rows] == cleaned
    assert all(row["fold"] is None for row in rows)  # folds are off in params.yaml
    assert {row["split"] for row in rows} == set(SIDES)
    sides_of_group: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["group"] is not None:
            sides_of_group[row["group"]].add(row["split"])
    assert len(sides_of_group) == 15
    assert all(len(sides) == 1 for sides in sides_of_group.values())

    # The metrics describe the manifest.
    metrics = json.loads((tmp_path / "a" / "split.json").read_text(encoding="utf-8"))
    assert set(metrics) == {*SIDES, "whole", "max_gap_points", "classes_missing_from_sides"}
    assert sum(metrics[side]["images"] for side in SIDES) == len(rows) == metrics["whole"]["images"]
    assert metrics["classes_missing_from_sides"] == {}  # 3 groups per class: one per side
    gaps = [abs(gap) for side in SIDES for gap in metrics[side]["gap_points"].values()]
    assert metrics["max_gap_points"] == pytest.approx(max(gaps))
    for side in SIDES:
        members = [row for row in rows if row["split"] == side]
        named = {row["group"] for row in members if row["group"] is not None}
        ungrouped = sum(row["group"] is None for row in members)
        counts = Counter(name for row in members for name in _classes_of(row, task))
        assert metrics[side]["images"] == len(members)
        assert metrics[side]["groups"] == len(named) + ungrouped
        # a group per named part, one per ungrouped image
        parts = {name: set() for name in CLASSES}
        for row in members:
            for name in _classes_of(row, task):
                parts[name].add(row["group"] or row["path"])
        assert metrics[side]["class_groups"] == {name: len(parts[name]) for name in CLASSES}
        assert set(metrics[side]["class_share"]) == set(CLASSES)
        for name in CLASSES:
            expected = counts[name] / len(members)
            assert metrics[side]["class_share"][name] == pytest.approx(expected, abs=1e-4)
            gap = 100 * (metrics[side]["class_share"][name] - metrics["whole"]["class_share"][name])
            assert metrics[side]["gap_points"][name] == pytest.approx(gap, abs=0.01)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_split_stage_output_is_byte_identical_for_the_same_seed(tmp_path: Path, task: str) -> None:
    params, cleaned = _prepare(tmp_path, task)
    assert _run_split(params, cleaned, tmp_path / "a") == 0
    assert _run_split(params, cleaned, tmp_path / "b") == 0
    for name in ("split.parquet", "split.json"):
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes(), name


def test_split_stage_follows_the_seed_and_fractions_in_params(tmp_path: Path) -> None:
    _, cleaned = _prepare(tmp_path, "multiclass")
    root = tmp_path / "data"
    assignments = []
    for seed in range(4):
        seeded = _write_params(tmp_path / f"p{seed}.yaml", root, "multiclass", {"seed": seed})
        assert _run_split(seeded, cleaned, tmp_path / f"s{seed}") == 0
        rows, _ = read_manifest(tmp_path / f"s{seed}" / "split.parquet", "split")
        assignments.append(tuple(row["split"] for row in rows))
    assert len(set(assignments)) > 1

    no_val = _write_params(
        tmp_path / "noval.yaml", root, "multiclass", {"train": 0.8, "val": 0.0, "test": 0.2}
    )
    assert _run_split(no_val, cleaned, tmp_path / "noval") == 0
    rows, _ = read_manifest(tmp_path / "noval" / "split.parquet", "split")
    assert {row["split"] for row in rows} == {"train", "test"}
    metrics = json.loads((tmp_path / "noval" / "split.json").read_text(encoding="utf-8"))
    assert metrics["val"]["images"] == 0
    assert metrics["val"]["groups"] == 0
    assert metrics["val"]["gap_points"] == {}


def test_split_stage_rejects_fractions_that_do_not_sum_to_one(tmp_path: Path) -> None:
    _, cleaned = _prepare(tmp_path, "multiclass")
    bad = _write_params(tmp_path / "bad.yaml", tmp_path / "data", "multiclass", {"train": 0.8})
    assert _run_split(bad, cleaned, tmp_path / "bad") == 2
    assert not (tmp_path / "bad" / "split.parquet").exists()
    assert not (tmp_path / "bad" / "split.json").exists()


def test_k_fold_mode_writes_folds_and_takes_the_chosen_fold_as_val(tmp_path: Path) -> None:
    _, cleaned = _prepare(tmp_path, "multiclass")
    folds = {"train": 0.8, "val": 0.0, "test": 0.2, "folds": 2, "fold": 1}
    params = _write_params(tmp_path / "folds.yaml", tmp_path / "data", "multiclass", folds)
    assert _run_split(params, cleaned, tmp_path / "k") == 0
    rows, _ = read_manifest(tmp_path / "k" / "split.parquet", "split")
    assert {row["fold"] for row in rows if row["split"] == "test"} == {None}
    assert {row["fold"] for row in rows if row["split"] == "val"} == {1}
    assert {row["fold"] for row in rows if row["split"] == "train"} == {0}
    metrics = json.loads((tmp_path / "k" / "split.json").read_text(encoding="utf-8"))
    assert metrics["fold_0"]["images"] + metrics["fold_1"]["images"] + metrics["test"][
        "images"
    ] == len(rows)
    for fold in (0, 1):  # 3 groups per class: one for test and one for each fold
        members = [row for row in rows if row["fold"] == fold]
        assert {row["label"] for row in members} == set(CLASSES)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"folds": 1}, "split.folds must be 0"),
        ({"folds": 3}, "set split.val to 0 and split.train to 0.85"),
        ({"train": 0.85, "val": 0.0, "folds": 3, "fold": 3}, "split.fold must be below"),
    ],
)
def test_fold_settings_that_cannot_work_are_refused(
    tmp_path: Path, changes: dict[str, Any], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, cleaned = _prepare(tmp_path, "multiclass")
    bad = _write_params(tmp_path / "bad.yaml", tmp_path / "data", "multiclass", changes)
    assert _run_split(bad, cleaned, tmp_path / "bad") == 2
    assert message in caplog.text
    assert not (tmp_path / "bad" / "split.parquet").exists()


def test_too_few_groups_of_a_class_stops_the_stage_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, cleaned = _prepare(tmp_path, "multiclass")
    # 6 sides; each class has 3 parts and 1-2 ungrouped images: 4-5 groups
    folds = {"train": 0.7, "val": 0.0, "test": 0.3, "folds": 5}
    params = _write_params(tmp_path / "p.yaml", tmp_path / "data", "multiclass", folds)
    assert _run_split(params, cleaned, tmp_path / "few") == 2
    assert "class 'crack' has 4 group(s)" in caplog.text
    assert "at least 6 are needed" in caplog.text
    assert not (tmp_path / "few" / "split.parquet").exists()

    lenient = _write_params(
        tmp_path / "q.yaml",
        tmp_path / "data",
        "multiclass",
        {**folds, "min_groups_policy": "train_only"},
    )
    assert _run_split(lenient, cleaned, tmp_path / "lenient") == 0
    metrics = json.loads((tmp_path / "lenient" / "split.json").read_text(encoding="utf-8"))
    assert set(metrics["classes_missing_from_sides"]) == set(CLASSES)
    rows, _ = read_manifest(tmp_path / "lenient" / "split.parquet", "split")
    assert {row["split"] for row in rows} == {"train"}


def test_a_near_duplicate_of_another_part_lands_on_the_same_side(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _make_dataset(root, MULTICLASS_LABELS, seed=11)
    pixels = np.asarray(Image.open(root / "images" / "g04_0.png")).copy()
    pixels[0, 0] ^= 1  # one pixel off: not an exact copy, a near duplicate
    Image.fromarray(pixels).save(root / "images" / "twin.png")
    with (root / "labels.csv").open("a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow(["twin.png", MULTICLASS_LABELS[4], "part-99"])
    _, cleaned = _prepare_existing(tmp_path, root, "multiclass")
    issues, _ = read_manifest(tmp_path / "issues.parquet", "issues")
    near = {row["path"]: row["near_dup_group"] for row in issues}
    assert near["images/twin.png"] is not None
    assert near["images/twin.png"] == near["images/g04_0.png"]
    for seed in range(6):
        seeded = _write_params(tmp_path / f"p{seed}.yaml", root, "multiclass", {"seed": seed})
        assert _run_split(seeded, cleaned, tmp_path / f"s{seed}") == 0
        rows, _ = read_manifest(tmp_path / f"s{seed}" / "split.parquet", "split")
        side = {row["path"]: row["split"] for row in rows}
        assert side["images/twin.png"] == side["images/g04_0.png"] == side["images/g04_1.png"]


def test_a_leak_after_splitting_stops_the_stage_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A leak cannot be produced through the real splitter (that is the point of it), so the
    # stage's own guard is tested with a splitter that sends one image of part-01 to test.
    params, cleaned = _prepare(tmp_path, "multiclass")

    def leaky(rows: list[dict[str, Any]], *args: Any) -> tuple[list[str], dict[str, Any]]:
        return ["test" if row["path"] == "images/g01_0.png" else "train" for row in rows], {}

    monkeypatch.setattr(split, "split_groups", leaky)
    assert _run_split(params, cleaned, tmp_path / "leak") == 2
    assert "group 'part-01' is on test, train" in caplog.text
    assert not (tmp_path / "leak" / "split.parquet").exists()
    assert not (tmp_path / "leak" / "split.json").exists()
