"""Tests of pipeline.sources (class folders, annotation tables, Pascal VOC) and of the path
confinement in pipeline.paths that keeps every source inside its data root."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import REPO

from pipeline.params import IngestParams
from pipeline.paths import PathError, resolve_inside, resolve_many_inside
from pipeline.sources import (
    Entry,
    SourceError,
    check_classes,
    list_folders,
    read_table,
    read_voc,
)


def ingest_params(root: Path, **changes: Any) -> IngestParams:
    """The repo's ingest section pointed at `root`, with `changes` applied."""
    section = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["ingest"]
    section.update(root=str(root), **changes)
    return IngestParams.model_validate(section)


def touch(path: Path, data: bytes = b"x") -> Path:
    """Sources only check that files exist; decoding is ingest's job."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- pipeline.paths.resolve_inside (and resolve_many_inside, path by path) --------------------


def resolve_one_of_many(root: Path, relative: str) -> Path:
    return resolve_many_inside(root, ["images/x.png", relative, "a/x.png"])[1]


@pytest.fixture(params=[resolve_inside, resolve_one_of_many], ids=["one", "many"])
def resolve(request: pytest.FixtureRequest) -> Callable[[Path, str], Path]:
    return request.param  # type: ignore[no-any-return]


def test_resolve_inside_accepts_nested_relative_paths(
    tmp_path: Path, resolve: Callable[[Path, str], Path]
) -> None:
    target = touch(tmp_path / "a" / "b.png")
    assert resolve(tmp_path, "a/b.png") == target.resolve()
    assert resolve(tmp_path, "a/../a/b.png") == target.resolve()


@pytest.mark.parametrize("relative", ["../x.png", "a/../../x.png", ".."])
def test_resolve_inside_rejects_dot_dot_escapes(
    tmp_path: Path, relative: str, resolve: Callable[[Path, str], Path]
) -> None:
    root = tmp_path / "root"
    touch(root / "a" / "in.png")
    touch(tmp_path / "x.png")
    with pytest.raises(PathError, match="outside the data root"):
        resolve(root, relative)


def test_resolve_inside_rejects_absolute_and_empty_paths(
    tmp_path: Path, resolve: Callable[[Path, str], Path]
) -> None:
    inside = touch(tmp_path / "a.png")
    with pytest.raises(PathError, match="expected a path relative to"):
        resolve(tmp_path, str(inside))  # absolute, even though it lies inside
    with pytest.raises(PathError, match="expected a path relative to"):
        resolve(tmp_path, "")


def test_resolve_inside_rejects_symlinks_escaping_the_root(
    tmp_path: Path, resolve: Callable[[Path, str], Path]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    secret = touch(tmp_path / "outside" / "secret.png")
    (root / "file-link.png").symlink_to(secret)
    (root / "dir-link").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(PathError, match="outside the data root"):
        resolve(root, "file-link.png")
    with pytest.raises(PathError, match="outside the data root"):
        resolve(root, "dir-link/secret.png")


def test_resolve_inside_accepts_symlinks_that_stay_inside(
    tmp_path: Path, resolve: Callable[[Path, str], Path]
) -> None:
    target = touch(tmp_path / "real" / "a.png")
    (tmp_path / "alias.png").symlink_to(target)
    assert resolve(tmp_path, "alias.png") == target.resolve()


def test_resolve_many_inside_equals_resolving_each(tmp_path: Path) -> None:
    """Folders resolved once: files in a linked folder, linked files and `..` steps come out
    as resolve_inside gives them, and a link escaping the root among them is still refused."""
    for name in ("a/1.png", "a/2.png", "b/c/3.png", "4.png"):
        touch(tmp_path / name)
    (tmp_path / "linked").symlink_to(tmp_path / "b", target_is_directory=True)
    (tmp_path / "a" / "alias.png").symlink_to(tmp_path / "4.png")
    relatives = ["a/1.png", "a/2.png", "b/c/3.png", "linked/c/3.png", "a/alias.png", "a/../4.png"]
    relatives += ["4.png", "a/missing.png", "b/c/../../a/1.png"]
    expected = [resolve_inside(tmp_path, relative) for relative in relatives]
    assert resolve_many_inside(tmp_path, relatives) == expected
    (tmp_path / "a" / "out.png").symlink_to(touch(tmp_path.parent / f"{tmp_path.name}-out.png"))
    with pytest.raises(PathError, match=r"'a/out\.png' resolves outside the data root"):
        resolve_many_inside(tmp_path, [*relatives, "a/out.png"])


# --- source (a): class folders ---------------------------------------------------------------


def test_list_folders_walks_class_folders_and_skips_hidden_files(tmp_path: Path) -> None:
    images = tmp_path / "images"
    touch(images / "good" / "b.png")
    touch(images / "good" / "a.jpg")
    touch(images / "scratch" / "lot1" / "deep" / "c.bmp")
    touch(images / "scratch" / "notes.txt")
    touch(images / "scratch" / ".DS_Store")
    touch(images / "scratch" / ".cache" / "d.png")
    touch(images / ".ipynb_checkpoints" / "e.png")
    entries = list_folders(images, ingest_params(tmp_path, source="folders"))
    assert sorted(entries, key=lambda entry: entry.path) == [
        Entry("good/a.jpg", ("good",)),
        Entry("good/b.png", ("good",)),
        Entry("scratch/lot1/deep/c.bmp", ("scratch",)),
        Entry("scratch/notes.txt", ("scratch",)),
    ]


def test_list_folders_refuses_files_outside_any_class_folder(tmp_path: Path) -> None:
    images = tmp_path / "images"
    touch(images / "good" / "a.png")
    touch(images / "loose.png")
    touch(images / "stray.jpg")
    with pytest.raises(SourceError, match=r"loose\.png.*stray\.jpg"):
        list_folders(images, ingest_params(tmp_path, source="folders"))


def test_list_folders_needs_multiclass_and_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        list_folders(tmp_path / "nope", ingest_params(tmp_path, source="folders"))
    touch(tmp_path / "images" / "good" / "a.png")
    multilabel = ingest_params(tmp_path, source="folders", task="multilabel")
    with pytest.raises(SourceError, match="multiclass"):
        list_folders(tmp_path / "images", multilabel)


# --- source (b): annotation table ------------------------------------------------------------


def write_table(root: Path, rows: list[dict[str, Any]], name: str = "labels.csv") -> None:
    frame = pd.DataFrame(rows)
    if name.endswith(".csv"):
        frame.to_csv(root / name, index=False)
    else:
        frame.to_parquet(root / name, index=False)


def test_read_table_parses_labels_groups_and_boxes(tmp_path: Path) -> None:
    images = tmp_path / "images"
    touch(images / "a.png")
    touch(images / "sub" / "b.png")
    write_table(
        tmp_path,
        [
            {"path": "a.png", "label": "good", "group": "g1", "boxes": ""},
            {
                "path": "sub\\b.png",
                "label": " scratch ",
                "group": "",
                "boxes": '[[1, 2, 5, 6.5, "scratch"]]',
            },
        ],
    )
    entries = read_table(tmp_path, images, ingest_params(tmp_path))
    assert entries == [
        Entry("a.png", ("good",), "g1", ()),
        Entry("sub/b.png", ("scratch",), None, ((1.0, 2.0, 5.0, 6.5, "scratch"),)),
    ]


@pytest.mark.parametrize("name", ["labels.csv", "labels.parquet"])
def test_read_table_multilabel_splits_sorts_and_dedups_labels(tmp_path: Path, name: str) -> None:
    images = tmp_path / "images"
    for file in ("a.png", "b.png", "c.png"):
        touch(images / file)
    write_table(
        tmp_path,
        [
            {"path": "a.png", "label": "", "group": None, "boxes": None},
            {"path": "b.png", "label": "stain; hole;stain", "group": "7", "boxes": None},
            {"path": "c.png", "label": "hole", "group": None, "boxes": None},
        ],
        name,
    )
    params = ingest_params(tmp_path, task="multilabel", table=name)
    entries = read_table(tmp_path, images, params)
    assert [(e.path, e.labels, e.group, e.boxes) for e in entries] == [
        ("a.png", (), None, ()),
        ("b.png", ("hole", "stain"), "7", ()),
        ("c.png", ("hole",), None, ()),
    ]


def test_read_table_lists_every_bad_row_at_once(tmp_path: Path) -> None:
    images = tmp_path / "images"
    touch(images / "ok.png")
    touch(images / "twice.png")
    touch(tmp_path / "outside.png")
    write_table(
        tmp_path,
        [
            {"path": "ok.png", "label": "good", "group": "", "boxes": ""},  # row 2
            {"path": "missing1.png", "label": "good", "group": "", "boxes": ""},  # row 3
            {"path": "../outside.png", "label": "good", "group": "", "boxes": ""},  # row 4
            {"path": "twice.png", "label": "good", "group": "", "boxes": ""},  # row 5
            {"path": "twice.png", "label": "hole", "group": "", "boxes": ""},  # row 6
            {"path": "missing2.png", "label": "good", "group": "", "boxes": ""},  # row 7
            {"path": "ok.png", "label": "good", "group": "", "boxes": "[[5, 1, 2, 3, 'x']]"},
        ],
    )
    with pytest.raises(SourceError) as caught:
        read_table(tmp_path, images, ingest_params(tmp_path))
    message = str(caught.value)
    assert "labels.csv" in message
    assert "row 3 ('missing1.png'): file not found" in message
    assert "row 7 ('missing2.png'): file not found" in message
    assert "row 4 ('../outside.png')" in message
    assert "row 6 ('twice.png'): duplicate of row 5" in message
    assert "row 8 ('ok.png'): duplicate of row 2" in message
    assert "5 problem(s)" in message


def test_read_table_reports_malformed_and_inverted_boxes(tmp_path: Path) -> None:
    images = tmp_path / "images"
    touch(images / "a.png")
    touch(images / "b.png")
    write_table(
        tmp_path,
        [
            {"path": "a.png", "label": "hole", "group": "", "boxes": "[[1, 2, 3]]"},
            {"path": "b.png", "label": "hole", "group": "", "boxes": '[[5, 1, 2, 3, "hole"]]'},
        ],
    )
    with pytest.raises(SourceError) as caught:
        read_table(tmp_path, images, ingest_params(tmp_path))
    message = str(caught.value)
    assert "row 2 ('a.png'): boxes not a JSON list" in message
    assert "row 3 ('b.png'): box [5.0, 1.0, 2.0, 3.0, 'hole'] needs x0 < x1" in message


def test_read_table_multiclass_row_without_label_is_an_error(tmp_path: Path) -> None:
    images = tmp_path / "images"
    touch(images / "a.png")
    write_table(tmp_path, [{"path": "a.png", "label": "", "group": "", "boxes": ""}])
    with pytest.raises(SourceError, match=r"row 2 \('a.png'\): no label"):
        read_table(tmp_path, images, ingest_params(tmp_path, classes=None))


def test_read_table_names_missing_columns_and_the_columns_it_has(tmp_path: Path) -> None:
    images = tmp_path / "images"
    touch(images / "a.png")
    write_table(tmp_path, [{"file": "a.png", "label": "good"}])
    with pytest.raises(SourceError, match=r"missing column\(s\) \['path'\].*\['file', 'label'\]"):
        read_table(tmp_path, images, ingest_params(tmp_path, group_column=None, boxes_column=None))


def test_read_table_that_is_missing_or_of_another_type(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(SourceError, match="annotation table not found"):
        read_table(tmp_path, images, ingest_params(tmp_path))
    touch(tmp_path / "labels.xlsx")
    with pytest.raises(SourceError, match=r"csv or \.parquet"):
        read_table(tmp_path, images, ingest_params(tmp_path, table="labels.xlsx"))


# --- source (d): Pascal VOC ------------------------------------------------------------------


def voc_xml(filename: str, objects: list[tuple[str, int, int, int, int]]) -> str:
    parts = [
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in objects
    ]
    return f"<annotation><filename>{filename}</filename>{''.join(parts)}</annotation>"


def voc_setup(root: Path, files: dict[str, str]) -> tuple[Path, IngestParams, IngestParams]:
    images = root / "images"
    for name, text in files.items():
        touch(root / "voc" / name, text.encode())
    touch(images / "a.png")
    touch(images / "sub" / "b.png")
    multiclass = ingest_params(root, source="voc", voc="voc")
    multilabel = ingest_params(root, source="voc", voc="voc", task="multilabel")
    return images, multiclass, multilabel


def test_read_voc_gives_boxes_and_labels(tmp_path: Path) -> None:
    images, _, multilabel = voc_setup(
        tmp_path,
        {
            "a.xml": voc_xml("a.png", [("scratch", 1, 2, 5, 6), ("hole", 3, 3, 4, 8)]),
            "deeper/b.xml": voc_xml("sub/b.png", []),
        },
    )
    assert read_voc(tmp_path, images, multilabel) == [
        Entry(
            "a.png",
            ("hole", "scratch"),
            None,
            ((1.0, 2.0, 5.0, 6.0, "scratch"), (3.0, 3.0, 4.0, 8.0, "hole")),
        ),
        Entry("sub/b.png", (), None, ()),
    ]


def test_read_voc_multiclass_image_without_objects_is_good(tmp_path: Path) -> None:
    images, multiclass, _ = voc_setup(
        tmp_path,
        {"a.xml": voc_xml("a.png", [("hole", 1, 1, 3, 3)]), "b.xml": voc_xml("sub/b.png", [])},
    )
    assert read_voc(tmp_path, images, multiclass) == [
        Entry("a.png", ("hole",), None, ((1.0, 1.0, 3.0, 3.0, "hole"),)),
        Entry("sub/b.png", ("good",)),
    ]


def test_read_voc_multiclass_refuses_objects_of_two_classes(tmp_path: Path) -> None:
    images, multiclass, _ = voc_setup(
        tmp_path, {"a.xml": voc_xml("a.png", [("scratch", 1, 2, 5, 6), ("hole", 3, 3, 4, 8)])}
    )
    with pytest.raises(SourceError, match=r"a\.xml.*several classes.*multilabel"):
        read_voc(tmp_path, images, multiclass)


def test_read_voc_lists_every_bad_file(tmp_path: Path) -> None:
    images, _, multilabel = voc_setup(
        tmp_path,
        {
            "1.xml": voc_xml("missing.png", []),
            "2.xml": "<annotation><filename>a.png",
            "3.xml": "<annotation></annotation>",
            "4.xml": voc_xml("../escape.png", []),
            "5.xml": "<annotation><filename>a.png</filename><object><name>hole</name>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax></bndbox></object></annotation>",
            "6.xml": voc_xml("a.png", [("hole", 5, 1, 2, 3)]),
            "7.xml": voc_xml("sub/b.png", []),
            "8.xml": voc_xml("sub/b.png", [("hole", 1, 1, 2, 2)]),
        },
    )
    touch(tmp_path / "escape.png")
    with pytest.raises(SourceError) as caught:
        read_voc(tmp_path, images, multilabel)
    message = str(caught.value)
    assert "1.xml: image 'missing.png' not found" in message
    assert "2.xml:" in message
    assert "3.xml:" in message and "no <filename>" in message
    assert "4.xml:" in message and "outside the data root" in message
    assert "5.xml:" in message
    assert "6.xml:" in message and "x0 < x1" in message
    assert "8.xml:" in message and "7.xml" in message and "same image" in message
    assert "7 problem(s)" in message


# --- classes ---------------------------------------------------------------------------------


def test_check_classes_infers_sorted_classes_with_the_good_class(tmp_path: Path) -> None:
    entries = [
        Entry("a.png", ("stain",)),
        Entry("b.png", ("crack",), boxes=((0, 0, 1, 1, "dent"),)),
    ]
    params = ingest_params(tmp_path, classes=None, good_class="ok")
    assert check_classes(entries, params) == ("crack", "dent", "ok", "stain")


def test_check_classes_keeps_the_params_order(tmp_path: Path) -> None:
    params = ingest_params(tmp_path)
    assert check_classes([Entry("a.png", ("hole",))], params) == tuple(params.classes or ())


def test_check_classes_names_unknown_classes_and_where_they_are(tmp_path: Path) -> None:
    entries = [
        Entry("a.png", ("scratch",)),
        Entry("b.png", ("scartch",)),
        Entry("c.png", ("hole",), boxes=((0, 0, 1, 1, "hoel"),)),
    ]
    with pytest.raises(SourceError) as caught:
        check_classes(entries, ingest_params(tmp_path))
    message = str(caught.value)
    assert "['hoel', 'scartch']" in message
    assert "b.png" in message and "c.png" in message and "a.png" not in message
    assert "ingest.classes" in message


def test_list_folders_does_not_descend_into_symlinked_folders(tmp_path: Path) -> None:
    # The walk does not descend into symlinked sub-folders (a link loop cannot hang it) ...
    images = tmp_path / "images"
    touch(images / "good" / "a.png")
    os.symlink(images / "good", images / "good" / "loop", target_is_directory=True)
    entries = list_folders(images, ingest_params(tmp_path, source="folders"))
    assert [e.path for e in entries] == ["good/a.png"]
