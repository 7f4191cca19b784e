"""Tests of stages.ingest through its real CLI, on tiny generated images in tmp_path.

Each source (class folders, CSV/parquet table, masks, Pascal VOC) is ingested end to end and the
manifest read back; bad files must become unreadable rows with a reason, user errors exit 2
with a message naming the offending rows, and a failing run writes no manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, write_params
from PIL import Image

from pipeline.manifest import read_manifest
from stages import ingest

MAGNETIC_TILE = REPO.parent / "shared/datasets/magnetic_tile"
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF"}


# --- helpers ---------------------------------------------------------------------------------


def write_image(
    path: Path, size: tuple[int, int] = (12, 10), mode: str = "RGB", seed: int = 0
) -> bytes:
    """Write seeded noise of `size` (width, height) in the format of the suffix; return bytes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)  # (H, W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format=FORMATS[path.suffix.lower()])
    return path.read_bytes()


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def params_for(tmp_path: Path, root: Path, **ingest_changes: Any) -> Path:
    """The repo's params.yaml with its ingest section pointed at `root` and changed."""
    return write_params(tmp_path / "params.yaml", ingest={"root": str(root), **ingest_changes})


def run_ingest(tmp_path: Path, root: Path, **ingest_changes: Any) -> tuple[int, Path]:
    """Run the CLI; return (exit code, manifest path), the manifest in a folder of its own."""
    params = params_for(tmp_path, root, **ingest_changes)
    out = tmp_path / "out" / "ingest.parquet"
    return ingest.main(["--params", str(params), "--out", str(out)]), out


def ingest_rows(tmp_path: Path, root: Path, **ingest_changes: Any) -> dict[str, dict[str, Any]]:
    """Run the CLI, expect success, check the manifest file, return rows by path."""
    code, out = run_ingest(tmp_path, root, **ingest_changes)
    assert code == 0
    rows, info = read_manifest(out, "images")
    paths = [row["path"] for row in rows]
    assert paths == sorted(paths)
    assert len(set(paths)) == len(paths)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind
    assert info.task == ingest_changes.get("task", "multiclass")
    return {row["path"]: row for row in rows}


def failing_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, root: Path, **ingest_changes: Any
) -> str:
    """Run the CLI, expect exit 2 and no manifest; return the logged error text."""
    caplog.set_level(logging.ERROR)
    code, out = run_ingest(tmp_path, root, **ingest_changes)
    assert code == 2
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors, "exit code 2 without an error message"
    return "\n".join(errors)


def box(x0: float, y0: float, x1: float, y1: float, label: str) -> dict[str, Any]:
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "label": label}


TABLE = {"source": "table", "table": "labels.csv"}


# --- (a) class folders -----------------------------------------------------------------------


def test_folders_source_gives_one_row_per_file_with_facts_and_labels(tmp_path: Path) -> None:
    root = tmp_path / "data"
    images = root / "images"
    expected = {
        "good/a.png": ((12, 10), "RGB", "PNG"),
        "good/b.jpg": ((9, 7), "L", "JPEG"),
        "scratch/c.bmp": ((8, 8), "RGB", "BMP"),
        "scratch/lot1/d.tif": ((5, 11), "RGBA", "TIFF"),
        "hole/e.jpeg": ((6, 6), "RGB", "JPEG"),
    }
    data = {
        rel: write_image(images / rel, size, mode, seed)
        for seed, (rel, (size, mode, _)) in enumerate(expected.items())
    }
    write_image(images / "scratch" / ".hidden.png")
    write_image(images / ".ipynb_checkpoints" / "f.png")
    (images / "hole" / "notes.txt").write_text("shot with the old camera\n", encoding="utf-8")

    rows = ingest_rows(tmp_path, root, source="folders")

    assert sorted(rows) == sorted(f"images/{rel}" for rel in [*expected, "hole/notes.txt"])
    for rel, ((width, height), mode, fmt) in expected.items():
        row = rows[f"images/{rel}"]
        label = rel.split("/")[0]
        assert (row["width"], row["height"], row["mode"], row["format"]) == (
            width,
            height,
            mode,
            fmt,
        )
        assert row["sha256"] == hashlib.sha256(data[rel]).hexdigest()
        assert row["label"] == label
        assert row["labels"] == ([] if label == "good" else [label])
        assert row["group"] is None
        assert row["boxes"] == []
        assert row["is_unreadable_issue"] is False
        assert row["unreadable_reason"] is None
    text = rows["images/hole/notes.txt"]
    assert text["is_unreadable_issue"] is True
    assert ".txt" in text["unreadable_reason"]
    assert text["label"] == "hole"
    assert text["width"] is None


def test_a_decodable_file_with_an_unlisted_extension_is_unreadable(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "images" / "good" / "a.png")
    png = write_image(root / "images" / "good" / "b.png", seed=1)
    (root / "images" / "good" / "b.png").rename(root / "images" / "good" / "b.webp")
    rows = ingest_rows(tmp_path, root, source="folders", extensions=[".png"])
    assert rows["images/good/a.png"]["is_unreadable_issue"] is False
    webp = rows["images/good/b.webp"]
    assert webp["is_unreadable_issue"] is True
    assert "'.webp'" in webp["unreadable_reason"]
    assert webp["sha256"] == hashlib.sha256(png).hexdigest()


# --- (b) annotation table --------------------------------------------------------------------


def write_table(root: Path, rows: list[dict[str, Any]], name: str) -> None:
    frame = pd.DataFrame(rows)
    if name.endswith(".csv"):
        frame.fillna("").to_csv(root / name, index=False)
    else:
        frame.to_parquet(root / name, index=False)


def table_dataset(root: Path, task: str, name: str) -> None:
    """Three images; rows in reverse path order; the good row has no group and no boxes."""
    for seed, rel in enumerate(["lot1/a.png", "lot1/b.jpg", "lot2/c.png"]):
        write_image(root / "images" / rel, size=(20, 16), seed=seed)
    if task == "multiclass":
        labels = {"lot1/a.png": "good", "lot1/b.jpg": "scratch", "lot2/c.png": "hole"}
    else:
        labels = {"lot1/a.png": "", "lot1/b.jpg": "scratch;hole", "lot2/c.png": "hole"}
    boxes = {
        "lot1/a.png": None,
        "lot1/b.jpg": json.dumps([[1, 2, 5, 6, "scratch"], [0, 0, 20, 16, "hole"]])
        if task == "multilabel"
        else json.dumps([[1, 2, 5, 6, "scratch"]]),
        "lot2/c.png": json.dumps([[0, 0, 3, 3, "hole"], [4.5, 4, 8, 8, "hole"]]),
    }
    groups = {"lot1/a.png": None, "lot1/b.jpg": "part-1", "lot2/c.png": "part-2"}
    rows = [
        {"path": rel, "label": labels[rel], "group": groups[rel], "boxes": boxes[rel]}
        for rel in sorted(labels, reverse=True)
    ]
    write_table(root, rows, name)


@pytest.mark.parametrize("name", ["labels.csv", "labels.parquet"])
def test_table_source_multiclass(tmp_path: Path, name: str) -> None:
    root = tmp_path / "data"
    table_dataset(root, "multiclass", name)
    rows = ingest_rows(tmp_path, root, source="table", table=name)
    assert list(rows) == ["images/lot1/a.png", "images/lot1/b.jpg", "images/lot2/c.png"]
    good, scratch, hole = rows.values()
    assert (good["label"], good["labels"], good["group"], good["boxes"]) == ("good", [], None, [])
    assert (scratch["label"], scratch["labels"], scratch["group"]) == (
        "scratch",
        ["scratch"],
        "part-1",
    )
    assert scratch["boxes"] == [box(1, 2, 5, 6, "scratch")]
    assert (hole["label"], hole["labels"], hole["group"]) == ("hole", ["hole"], "part-2")
    assert hole["boxes"] == [box(0, 0, 3, 3, "hole"), box(4.5, 4, 8, 8, "hole")]
    assert all(row["is_unreadable_issue"] is False for row in rows.values())
    assert scratch["format"] == "JPEG"
    assert (hole["width"], hole["height"]) == (20, 16)


@pytest.mark.parametrize("name", ["labels.csv", "labels.parquet"])
def test_table_source_multilabel(tmp_path: Path, name: str) -> None:
    root = tmp_path / "data"
    table_dataset(root, "multilabel", name)
    rows = ingest_rows(tmp_path, root, source="table", table=name, task="multilabel")
    good, both, hole = rows.values()
    assert all(row["label"] is None for row in rows.values())
    assert (good["labels"], good["group"], good["boxes"]) == ([], None, [])
    assert (both["labels"], both["group"]) == (["hole", "scratch"], "part-1")
    assert both["boxes"] == [box(1, 2, 5, 6, "scratch"), box(0, 0, 20, 16, "hole")]
    assert (hole["labels"], hole["group"]) == (["hole"], "part-2")
    assert len(hole["boxes"]) == 2


def test_table_box_outside_the_image_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    write_image(root / "images" / "a.png", size=(20, 16))
    write_table(
        root,
        [{"path": "a.png", "label": "hole", "group": "", "boxes": '[[10, 10, 21, 12, "hole"]]'}],
        "labels.csv",
    )
    message = failing_run(tmp_path, caplog, root, **TABLE)
    assert "a.png" in message and "outside the 20x16 image" in message


# --- (c) masks -------------------------------------------------------------------------------


def mask_dataset(root: Path) -> None:
    write_image(root / "images" / "good" / "g.png", size=(20, 16))
    write_image(root / "images" / "scratch" / "s.jpg", size=(20, 16), seed=1)
    write_image(root / "images" / "hole" / "no-mask.png", size=(20, 16), seed=2)
    mask = np.zeros((16, 20), dtype=np.uint8)  # (H, W)
    mask[3:7, 2:6] = 255  # blob 1: columns 2..5, rows 3..6
    mask[10:12, 12:17] = 200  # blob 2: columns 12..16, rows 10..11
    mask[0, 18] = 255  # speckle: 1 pixel
    mask[14, 0:3] = 255  # speckle: 3 pixels
    mask[0:2, 8:10] = 100  # faint region below the threshold
    write_mask(root / "masks" / "scratch" / "s.png", mask)
    good_mask = np.zeros((16, 20), dtype=np.uint8)
    write_mask(root / "masks" / "good" / "g.png", good_mask)


def test_masks_become_boxes_of_their_connected_components(tmp_path: Path) -> None:
    root = tmp_path / "data"
    mask_dataset(root)
    rows = ingest_rows(tmp_path, root, source="folders", masks="masks", mask_min_area=4)
    assert rows["images/scratch/s.jpg"]["boxes"] == [
        box(2, 3, 6, 7, "scratch"),
        box(12, 10, 17, 12, "scratch"),
    ]
    assert rows["images/good/g.png"]["boxes"] == []
    assert rows["images/hole/no-mask.png"]["boxes"] == []


def test_masks_add_to_table_boxes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    mask_dataset(root)
    write_table(
        root,
        [
            {"path": "scratch/s.jpg", "label": "scratch", "boxes": '[[0, 0, 1, 1, "scratch"]]'},
            {"path": "good/g.png", "label": "good", "boxes": ""},
        ],
        "labels.csv",
    )
    rows = ingest_rows(tmp_path, root, masks="masks", group_column=None, **TABLE)
    assert rows["images/scratch/s.jpg"]["boxes"] == [
        box(0, 0, 1, 1, "scratch"),
        box(2, 3, 6, 7, "scratch"),
        box(12, 10, 17, 12, "scratch"),
    ]


def test_mask_of_the_wrong_size_is_an_error_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    mask_dataset(root)
    write_mask(root / "masks" / "scratch" / "s.png", np.zeros((10, 20), dtype=np.uint8))
    message = failing_run(tmp_path, caplog, root, source="folders", masks="masks")
    assert "scratch/s.jpg" in message
    assert "mask is 20x10, image is 20x16" in message


def test_mask_of_a_multilabel_image_with_two_defects_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    mask_dataset(root)
    write_table(
        root, [{"path": "scratch/s.jpg", "label": "scratch;hole", "boxes": ""}], "labels.csv"
    )
    message = failing_run(
        tmp_path, caplog, root, masks="masks", task="multilabel", group_column=None, **TABLE
    )
    assert "s.png" in message and "['hole', 'scratch']" in message


# --- (d) Pascal VOC --------------------------------------------------------------------------


def voc_xml(filename: str, objects: list[tuple[str, int, int, int, int]]) -> str:
    parts = [
        f"<object><name>{name}</name><pose>Unspecified</pose><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in objects
    ]
    return (
        f"<annotation><folder>images</folder><filename>{filename}</filename>"
        f"<size><width>20</width><height>16</height><depth>3</depth></size>"
        f"{''.join(parts)}</annotation>"
    )


def voc_dataset(root: Path, objects_of_b: list[tuple[str, int, int, int, int]]) -> None:
    write_image(root / "images" / "a.png", size=(20, 16))
    write_image(root / "images" / "sub" / "b.png", size=(20, 16), seed=1)
    (root / "voc" / "sub").mkdir(parents=True)
    (root / "voc" / "a.xml").write_text(voc_xml("a.png", []), encoding="utf-8")
    (root / "voc" / "sub" / "b.xml").write_text(voc_xml("sub/b.png", objects_of_b), "utf-8")


def test_voc_source_multilabel(tmp_path: Path) -> None:
    root = tmp_path / "data"
    voc_dataset(root, [("scratch", 1, 2, 5, 6), ("hole", 10, 3, 20, 16), ("scratch", 7, 7, 9, 9)])
    rows = ingest_rows(tmp_path, root, source="voc", voc="voc", task="multilabel")
    assert list(rows) == ["images/a.png", "images/sub/b.png"]
    good, defect = rows.values()
    assert (good["label"], good["labels"], good["boxes"]) == (None, [], [])
    assert (defect["label"], defect["labels"]) == (None, ["hole", "scratch"])
    assert defect["boxes"] == [
        box(1, 2, 5, 6, "scratch"),
        box(10, 3, 20, 16, "hole"),
        box(7, 7, 9, 9, "scratch"),
    ]


def test_voc_source_multiclass(tmp_path: Path) -> None:
    root = tmp_path / "data"
    voc_dataset(root, [("crack", 1, 2, 5, 6), ("crack", 7, 7, 9, 9)])
    rows = ingest_rows(tmp_path, root, source="voc", voc="voc")
    good, defect = rows.values()
    assert (good["label"], good["labels"]) == ("good", [])
    assert (defect["label"], defect["labels"]) == ("crack", ["crack"])
    assert len(defect["boxes"]) == 2


def test_voc_multiclass_with_two_classes_in_one_image_exits_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    voc_dataset(root, [("scratch", 1, 2, 5, 6), ("hole", 10, 3, 20, 16)])
    message = failing_run(tmp_path, caplog, root, source="voc", voc="voc")
    assert "b.xml" in message
    assert "multilabel" in message


# --- bad files are rows, never crashes or drops ----------------------------------------------


def test_bad_files_become_unreadable_rows_with_reasons(tmp_path: Path) -> None:
    root = tmp_path / "data"
    good, scratch = root / "images" / "good", root / "images" / "scratch"
    readable = {
        "good/ok.png": write_image(good / "ok.png", (12, 10)),
        "scratch/ok.jpg": write_image(scratch / "ok.jpg", (9, 7), "L", seed=1),
        "scratch/edge.png": write_image(scratch / "edge.png", (40, 25), seed=2),  # = max_pixels
    }
    png = write_image(good / "trunc.png", (30, 20), seed=3)
    (good / "trunc.png").write_bytes(png[: len(png) // 2])
    jpg = write_image(good / "trunc.jpg", (30, 20), seed=4)
    (good / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    (good / "zero.png").write_bytes(b"")
    (scratch / "text.jpg").write_text("this is not a JPEG\n", encoding="utf-8")
    write_image(scratch / "big.png", (41, 25), seed=5)
    (tmp_path / "secret.png").write_bytes(png)
    (scratch / "link.png").symlink_to(tmp_path / "secret.png")

    rows = ingest_rows(tmp_path, root, source="folders", max_pixels=40 * 25)

    assert len(rows) == 9  # every file is a row
    for rel, data in readable.items():
        row = rows[f"images/{rel}"]
        assert row["is_unreadable_issue"] is False
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert (rows["images/scratch/ok.jpg"]["mode"], rows["images/scratch/ok.jpg"]["format"]) == (
        "L",
        "JPEG",
    )
    expected_reasons = {
        "good/trunc.png": "truncated",
        "good/trunc.jpg": "truncated",
        "good/zero.png": "zero-byte",
        "scratch/text.jpg": "not a recognised image format",
        "scratch/big.png": "41x25 = 1025 pixels exceeds max_pixels 1000",
        "scratch/link.png": "outside the data root",
    }
    for rel, reason in expected_reasons.items():
        row = rows[f"images/{rel}"]
        assert row["is_unreadable_issue"] is True, rel
        assert reason in row["unreadable_reason"].lower(), (rel, row["unreadable_reason"])
        assert (row["width"], row["height"], row["mode"], row["format"]) == (None,) * 4
        assert row["label"] == rel.split("/")[0]  # kept with its label for the clean stage
    for rel in ("good/trunc.png", "good/zero.png", "scratch/text.jpg"):
        data = (root / "images" / rel).read_bytes()
        assert rows[f"images/{rel}"]["sha256"] == hashlib.sha256(data).hexdigest()


# --- user errors: exit 2, a message naming the rows, no manifest -----------------------------


def simple_table(root: Path, rows: list[tuple[str, str]], existing: list[str]) -> None:
    for seed, rel in enumerate(existing):
        write_image(root / "images" / rel, seed=seed)
    write_table(
        root, [{"path": p, "label": label, "group": "", "boxes": ""} for p, label in rows], "l.csv"
    )


USER_TABLE = {"source": "table", "table": "l.csv"}


def test_rows_whose_files_are_missing_are_all_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    rows = [("a.png", "good"), ("gone1.png", "good"), ("b.png", "hole"), ("gone2.png", "hole")]
    simple_table(root, rows, ["a.png", "b.png"])
    message = failing_run(tmp_path, caplog, root, **USER_TABLE)
    assert "row 3 ('gone1.png'): file not found" in message
    assert "row 5 ('gone2.png'): file not found" in message
    assert "a.png'" not in message and "b.png'" not in message


def test_path_escaping_the_root_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    simple_table(root, [("a.png", "good"), ("../x.png", "good")], ["a.png"])
    write_image(root / "x.png")  # exists, but outside the image folder
    message = failing_run(tmp_path, caplog, root, **USER_TABLE)
    assert "row 3 ('../x.png')" in message
    assert "outside the data root" in message


def test_duplicate_rows_are_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    simple_table(
        root, [("a.png", "good"), ("b.png", "hole"), ("a.png", "hole")], ["a.png", "b.png"]
    )
    message = failing_run(tmp_path, caplog, root, **USER_TABLE)
    assert "row 4 ('a.png'): duplicate of row 2" in message


def test_unknown_class_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    simple_table(root, [("a.png", "good"), ("b.png", "scartch")], ["a.png", "b.png"])
    message = failing_run(tmp_path, caplog, root, **USER_TABLE)
    assert "'scartch'" in message
    assert "b.png" in message
    assert "ingest.classes" in message


def test_missing_table_column_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    write_image(root / "images" / "a.png")
    write_table(root, [{"path": "a.png", "label": "good", "boxes": ""}], "l.csv")
    message = failing_run(tmp_path, caplog, root, **USER_TABLE)
    assert "missing column(s) ['group']" in message
    assert "['path', 'label', 'boxes']" in message


def test_typo_in_ingest_params_names_the_key_and_the_valid_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    simple_table(root, [("a.png", "good")], ["a.png"])
    message = failing_run(tmp_path, caplog, root, mask_treshold=100, **USER_TABLE)
    assert "unknown key 'ingest.mask_treshold'" in message
    assert "mask_threshold" in message and "max_pixels" in message


def test_missing_dataset_folder_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    message = failing_run(tmp_path, caplog, tmp_path / "nowhere", source="folders")
    assert "nowhere" in message and "ingest.root" in message


def test_folders_source_without_images_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "data" / "images" / "good").mkdir(parents=True)
    message = failing_run(tmp_path, caplog, tmp_path / "data", source="folders")
    assert "lists no images" in message


# --- the real data set -----------------------------------------------------------------------


@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason="shared magnetic_tile data set not present")
def test_magnetic_tile_data_set_ingests_completely(tmp_path: Path) -> None:
    classes = ["MT_Free", "MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"]
    rows = ingest_rows(
        tmp_path,
        MAGNETIC_TILE,
        source="table",
        table="tiles.csv",
        group_column="tile",
        boxes_column=None,
        masks="masks",
        good_class="MT_Free",
        classes=classes,
    )
    assert len(rows) == 1344
    counts = Counter(row["label"] for row in rows.values())
    assert counts == {
        "MT_Free": 952,
        "MT_Blowhole": 115,
        "MT_Uneven": 103,
        "MT_Break": 85,
        "MT_Crack": 57,
        "MT_Fray": 32,
    }
    assert not any(row["is_unreadable_issue"] for row in rows.values())
    assert all(row["group"] for row in rows.values())
    assert all(row["format"] == "JPEG" and row["width"] > 0 for row in rows.values())
    without_boxes = Counter(
        row["label"] for row in rows.values() if row["label"] != "MT_Free" and not row["boxes"]
    )
    assert set(without_boxes) <= {"MT_Uneven"}  # README: a few MT_Uneven masks are empty
    assert without_boxes["MT_Uneven"] <= 10
    for row in rows.values():
        if row["label"] == "MT_Free":
            assert row["boxes"] == [] and row["labels"] == []
        else:
            assert row["labels"] == [row["label"]]
            assert all(b["label"] == row["label"] for b in row["boxes"])
            assert all(
                0 <= b["x0"] < b["x1"] <= row["width"] and 0 <= b["y0"] < b["y1"] <= row["height"]
                for b in row["boxes"]
            )
