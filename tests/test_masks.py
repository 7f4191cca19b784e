"""Tests of pipeline.masks: defect boxes from connected components of a thresholded mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.io import ImageReadError
from pipeline.masks import boxes_from_mask, mask_path_for, read_mask


def blank(height: int = 16, width: int = 20) -> np.ndarray:
    return np.zeros((height, width), dtype=np.uint8)  # (H, W)


def test_one_rectangle_gives_its_box_with_exclusive_upper_corner() -> None:
    mask = blank()
    mask[3:7, 2:6] = 255  # rows 3..6, columns 2..5
    assert boxes_from_mask(mask, 127, 1, "scratch") == [(2.0, 3.0, 6.0, 7.0, "scratch")]


def test_single_pixel_box_is_one_pixel_wide() -> None:
    mask = blank()
    mask[5, 9] = 255
    assert boxes_from_mask(mask, 127, 1, "hole") == [(9.0, 5.0, 10.0, 6.0, "hole")]


def test_blob_touching_the_far_edges_ends_at_the_image_size() -> None:
    mask = blank(height=16, width=20)
    mask[12:, 17:] = 255
    assert boxes_from_mask(mask, 127, 1, "x") == [(17.0, 12.0, 20.0, 16.0, "x")]


def test_separate_blobs_give_separate_boxes_and_speckle_is_ignored() -> None:
    mask = blank()
    mask[3:7, 2:6] = 255  # 16 px
    mask[10:12, 12:17] = 200  # 10 px, above the threshold
    mask[0, 18] = 255  # 1 px speckle, below min_area
    mask[14, 0:3] = 255  # 3 px speckle, below min_area
    assert boxes_from_mask(mask, 127, 4, "crack") == [
        (2.0, 3.0, 6.0, 7.0, "crack"),
        (12.0, 10.0, 17.0, 12.0, "crack"),
    ]


def test_component_of_exactly_min_area_is_kept() -> None:
    mask = blank()
    mask[1:3, 1:3] = 255  # 4 px
    assert boxes_from_mask(mask, 127, 4, "x") == [(1.0, 1.0, 3.0, 3.0, "x")]
    assert boxes_from_mask(mask, 127, 5, "x") == []


def test_threshold_is_strict() -> None:
    mask = blank()
    mask[2:4, 2:4] = 127  # at the threshold: not defect
    mask[8:10, 8:10] = 128  # above it
    assert boxes_from_mask(mask, 127, 1, "x") == [(8.0, 8.0, 10.0, 10.0, "x")]


def test_diagonal_neighbours_are_one_component() -> None:
    mask = blank()
    for step in range(4):
        mask[2 + step, 3 + step] = 255
    assert boxes_from_mask(mask, 127, 1, "x") == [(3.0, 2.0, 7.0, 6.0, "x")]


def test_empty_mask_gives_no_boxes() -> None:
    assert boxes_from_mask(blank(), 127, 1, "x") == []


def test_mask_path_mirrors_the_image_path_with_png_suffix(tmp_path: Path) -> None:
    assert mask_path_for(tmp_path, "crack/lot1/a.jpg") == tmp_path / "crack/lot1/a.png"
    assert mask_path_for(tmp_path, "b.png") == tmp_path / "b.png"


def test_read_mask_converts_to_grey(tmp_path: Path) -> None:
    rgb = np.zeros((6, 8, 3), dtype=np.uint8)
    rgb[1:3, 2:5] = 255
    path = tmp_path / "m.png"
    Image.fromarray(rgb).save(path)
    mask = read_mask(path, (8, 6), 10_000)
    assert mask.shape == (6, 8)
    assert mask.dtype == np.uint8
    assert boxes_from_mask(mask, 127, 1, "x") == [(2.0, 1.0, 5.0, 3.0, "x")]


def test_read_mask_of_another_size_names_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(blank(height=6, width=8)).save(path)
    with pytest.raises(ImageReadError, match=r"m\.png.*8x6.*image is 6x8"):
        read_mask(path, (6, 8), 10_000)


def test_read_mask_names_an_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        read_mask(path, (8, 6), 10_000)
