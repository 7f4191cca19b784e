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

REPO = Path(__file__).resolve().parents[1]
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
    """Run the real ingest and clean CLIs; return (params file, cleaned manifest)."""
    root = tmp_path / "data"
    _make_dataset(root, MULTICLASS_LABELS if task == "multiclass" else MULTILABEL_LABELS, seed=11)
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
    assert [{k: v for k, v in row.items() if k != "split"} for row in rows] == cleaned
    assert {row["split"] for row in rows} == set(SIDES)
    sides_of_group: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["group"] is not None:
            sides_of_group[row["group"]].add(row["split"])
    assert len(sides_of_group) == 15
    assert all(len(sides) == 1 for sides in sides_of_group.values())

    # The metrics describe the manifest.
    metrics = json.loads((tmp_path / "a" / "split.json").read_text(encoding="utf-8"))
    assert set(metrics) == set(SIDES)
    assert sum(metrics[side]["images"] for side in SIDES) == len(rows)
    for side in SIDES:
        members = [row for row in rows if row["split"] == side]
        named = {row["group"] for row in members if row["group"] is not None}
        ungrouped = sum(row["group"] is None for row in members)
        counts = Counter(name for row in members for name in _classes_of(row, task))
        assert metrics[side]["images"] == len(members)
        assert metrics[side]["groups"] == len(named) + ungrouped
        assert set(metrics[side]["class_share"]) == set(CLASSES)
        for name in CLASSES:
            expected = counts[name] / len(members)
            assert metrics[side]["class_share"][name] == pytest.approx(expected, abs=1e-4)


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


def test_split_stage_rejects_fractions_that_do_not_sum_to_one(tmp_path: Path) -> None:
    _, cleaned = _prepare(tmp_path, "multiclass")
    bad = _write_params(tmp_path / "bad.yaml", tmp_path / "data", "multiclass", {"train": 0.8})
    assert _run_split(bad, cleaned, tmp_path / "bad") == 2
    assert not (tmp_path / "bad" / "split.parquet").exists()
    assert not (tmp_path / "bad" / "split.json").exists()
