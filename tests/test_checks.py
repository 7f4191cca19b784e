"""Tests of pipeline.checks: grey conversion for every mode, per-image features, and the scores.

Images are seeded textures (random cells upscaled, so they have both low-frequency structure
for the perceptual hash and edges for the Laplacian) written to tmp_path in real file formats.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import imagehash
import numpy as np
import pytest
from conftest import REPO
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter, PngImagePlugin

from pipeline import checks
from pipeline.checks import (
    HASHES,
    Features,
    blur_score,
    compute_features,
    dark_score,
    image_features,
    light_score,
    odd_size_score,
    read_spectra,
    score_checks,
    verification_patch,
)
from pipeline.dedup import patch_correlation, texture_levels, texture_spectra
from pipeline.io import ImageReadError, grey_u8, open_image
from pipeline.params import CleanParams, load_section

MAX_PIXELS = 10_000_000
SCORED = ("blur", "dark", "light", "odd_size")


def texture(seed: int, size: tuple[int, int] = (48, 48), cells: int = 12) -> Image.Image:
    """Seeded RGB texture of `size` (width, height): random cells, bicubic upscaled."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)  # (H, W, 3)
    return Image.fromarray(grid, "RGB").resize(size, Image.Resampling.BICUBIC)


def clean_params(**changes: Any) -> CleanParams:
    """The repository's clean params with the thresholds these tests rely on, and `changes`."""
    params = load_section(REPO / "params.yaml", "clean", CleanParams)
    fixed = {
        "blur_absolute": 20.0,
        "blur_relative": 0.1,
        "dark_threshold": 0.85,
        "light_threshold": 0.9,
        "odd_size_min_side": 32,
        "odd_size_threshold": 0.75,
    }
    return params.model_copy(update={**fixed, **changes})


def with_actions(params: CleanParams, **actions: str) -> CleanParams:
    return params.model_copy(update={"actions": params.actions.model_copy(update=actions)})


def features(p05: float = 0.3, p95: float = 0.7, sharpness: float = 100.0) -> Features:
    return Features("0" * 64, 0, sharpness, p05, p95)


# --- grey_u8 ---------------------------------------------------------------------------------


def test_grey_of_l_is_the_pixels_themselves() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    grey = grey_u8(Image.fromarray(pixels, "L"))
    assert grey.dtype == np.uint8
    np.testing.assert_array_equal(grey, pixels)


def test_grey_of_rgb_and_rgba_is_luma_and_ignores_alpha() -> None:
    # ITU-R 601 luma: 0.299 R + 0.587 G + 0.114 B.
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (10, 20, 30)]
    expected = [round(0.299 * r + 0.587 * g + 0.114 * b) for r, g, b in colours]
    rgb = Image.new("RGB", (len(colours), 1))
    rgb.putdata(colours)
    rgba = Image.new("RGBA", (len(colours), 1))
    rgba.putdata(
        [(*colour, alpha) for colour, alpha in zip(colours, (0, 255, 7, 0, 128, 1), strict=True)]
    )
    for image in (rgb, rgba):
        grey = grey_u8(image)
        assert grey.shape == (1, len(colours))
        assert np.abs(grey[0].astype(int) - expected).max() <= 1


def test_grey_of_palette_image_is_the_luma_of_the_palette_colour() -> None:
    image = Image.new("P", (4, 2))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
    image.putdata([0, 1, 2, 3, 3, 2, 1, 0])
    grey = grey_u8(image)
    assert grey.shape == (2, 4)
    assert np.abs(grey.astype(int) - [[76, 150, 29, 255], [255, 29, 150, 76]]).max() <= 1


def test_sixteen_bit_png_is_scaled_by_257_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 300, 1000, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        image.load()
        assert image.mode == "I;16"
        grey = grey_u8(image)
    # Clipping to 8 bits would turn 300 and 1000 into 255; scaling keeps their order and size.
    np.testing.assert_array_equal(grey, [[0, 1, 1, 4, 128, 255]])


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_int_and_float_images_are_stretched_onto_0_255_in_order(dtype: type) -> None:
    values = np.array([[-5, 0, 100, 1000], [7, 7, 99999, 3]], dtype=dtype)
    image = Image.fromarray(values)
    assert image.mode == ("I" if dtype is np.int32 else "F")
    grey = grey_u8(image)
    assert grey.dtype == np.uint8
    assert (grey.min(), grey.max()) == (0, 255)
    flat_values, flat_grey = values.ravel(), grey.ravel().astype(int)
    order = np.argsort(flat_values, kind="stable")
    assert np.all(np.diff(flat_grey[order]) >= 0)  # monotone: darker stays darker


def test_constant_int_image_does_not_divide_by_zero() -> None:
    grey = grey_u8(Image.fromarray(np.full((3, 5), 1234, dtype=np.int32)))
    assert grey.shape == (3, 5)
    assert len(np.unique(grey)) == 1


def test_non_finite_float_pixels_do_not_poison_the_rest() -> None:
    # A NaN "no-data" pixel must not turn the whole image into NaN (cast to garbage).
    values = np.array([[np.nan, 0.0, 0.5, 1.0, np.inf, -np.inf]], dtype=np.float32)
    with np.errstate(all="raise"):
        grey = grey_u8(Image.fromarray(values))
    np.testing.assert_array_equal(grey[0, 1:4], [0, 128, 255])


# --- image_features on every mode ------------------------------------------------------------


def _write_mode(tmp_path: Path, mode: str) -> Path:
    """A file whose decoded image has `mode` (the format chosen so the mode survives)."""
    base = texture(1, (40, 30))
    if mode == "I;16":
        pixels = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        image, name = Image.fromarray(pixels), "deep.png"
    elif mode == "I":
        pixels = np.asarray(base.convert("L"), dtype=np.int32) * 1000 - 70_000
        image, name = Image.fromarray(pixels), "int.tif"
    elif mode == "F":
        image, name = Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255), "f.tif"
    elif mode == "CMYK":
        image, name = base.convert("CMYK"), "cmyk.jpg"
    elif mode == "1x1":
        image, name = Image.new("RGB", (1, 1), (200, 10, 10)), "one.png"
    elif mode == "P":
        image, name = base.convert("P", palette=Image.Palette.ADAPTIVE), "p.png"
    else:
        image, name = base.convert(mode), f"{mode.lower()}.png"
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize("hash_name", sorted(HASHES))
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1", "I;16", "I", "F", "CMYK"])
def test_image_features_handle_every_mode(tmp_path: Path, mode: str, hash_name: str) -> None:
    path = _write_mode(tmp_path, mode)
    with Image.open(path) as image:
        assert image.mode == mode
    found = image_features(path, MAX_PIXELS, hash_name, 512)
    assert len(found.pixel_sha256) == 64
    assert 0 <= found.perceptual_hash < 2**64
    assert math.isfinite(found.sharpness)
    assert found.sharpness > 0  # a texture has edges in every mode
    assert 0.0 <= found.bright_p05 <= found.bright_p95 <= 1.0


@pytest.mark.parametrize("hash_name", sorted(HASHES))
def test_one_pixel_image_has_features(tmp_path: Path, hash_name: str) -> None:
    found = image_features(_write_mode(tmp_path, "1x1"), 1, hash_name, 512)
    assert found.sharpness == 0.0
    assert found.bright_p05 == found.bright_p95
    assert 0 <= found.perceptual_hash < 2**64


def test_resaved_png_has_the_same_pixel_and_perceptual_hash(tmp_path: Path) -> None:
    image = texture(2)
    image.save(tmp_path / "a.png", compress_level=1)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "re-saved")
    image.save(tmp_path / "b.png", compress_level=9, pnginfo=info)
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    for hash_name in HASHES:
        a, b = (
            image_features(tmp_path / n, MAX_PIXELS, hash_name, 512) for n in ("a.png", "b.png")
        )
        assert a == b


def test_exif_rotated_copy_has_the_features_of_the_upright_image(tmp_path: Path) -> None:
    upright = texture(5, (48, 32))
    upright.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn the stored pixels 90 degrees clockwise
    stored = Image.open(tmp_path / "upright.jpg").transpose(Image.Transpose.ROTATE_90)
    stored.save(tmp_path / "turned.png", exif=exif)
    for hash_name in HASHES:
        a, b = (
            image_features(tmp_path / n, MAX_PIXELS, hash_name, 512)
            for n in ("upright.jpg", "turned.png")
        )
        assert a == b


@pytest.mark.parametrize("size", [(20, 17), (40, 64), (64, 64), (100, 150), (300, 200)])
def test_whash_gives_imagehashs_bits_of_the_area_resampled_square(size: tuple[int, int]) -> None:
    side = 1 << (min(size).bit_length() - 1)
    for seed in range(5):
        image = texture(seed, size)
        square = cv2.resize(np.asarray(image), (side, side), interpolation=cv2.INTER_AREA)
        assert checks.whash(image) == imagehash.whash(Image.fromarray(square))


@pytest.mark.parametrize("hash_name", sorted(HASHES))
def test_hash_value_reads_the_hex_digits_of_the_hash(hash_name: str) -> None:
    for seed in range(3):
        found = HASHES[hash_name](texture(seed, (80, 64)))
        assert checks.hash_value(found) == int(str(found), 16)


def test_whash_of_a_flat_image_is_all_zero() -> None:
    # imagehash's bits here are the sign of round-off; a block sum at the median is not above it
    assert str(checks.whash(Image.new("L", (50, 70), 128))) == "0" * 16


def test_different_textures_differ_in_both_hashes(tmp_path: Path) -> None:
    texture(3).save(tmp_path / "a.png")
    texture(4).save(tmp_path / "b.png")
    a, b = (image_features(tmp_path / n, MAX_PIXELS, "phash", 512) for n in ("a.png", "b.png"))
    assert a.pixel_sha256 != b.pixel_sha256
    assert (a.perceptual_hash ^ b.perceptual_hash).bit_count() > 10


def test_brightness_percentiles_of_a_uniform_image(tmp_path: Path) -> None:
    Image.new("L", (50, 40), 51).save(tmp_path / "grey.png")
    found = image_features(tmp_path / "grey.png", MAX_PIXELS, "phash", 512)
    assert found.bright_p05 == found.bright_p95 == pytest.approx(0.2)
    assert found.sharpness == 0.0


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (37, 53), (200, 100)])
def test_percentiles_from_the_histogram_equal_numpys(shape: tuple[int, int]) -> None:
    grey = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    qs = (0, 5, 37.5, 95, 100)
    assert checks._percentiles(grey, qs) == pytest.approx(np.percentile(grey, qs).tolist())


def test_percentiles_ignore_a_few_extreme_pixels(tmp_path: Path) -> None:
    pixels = np.full((20, 20), 100, dtype=np.uint8)
    pixels.ravel()[:8] = 0  # 2% black, 2% white: outside the 5th..95th percentiles
    pixels.ravel()[8:16] = 255
    Image.fromarray(pixels).save(tmp_path / "specks.png")
    found = image_features(tmp_path / "specks.png", MAX_PIXELS, "phash", 512)
    assert found.bright_p05 == found.bright_p95 == pytest.approx(100 / 255)


@pytest.mark.parametrize("working_size", [0, 16, 24, 33, 48, 64, 100, 128, 199, 256, 400, 1024])
@pytest.mark.parametrize("cells", [30, 96])
def test_blurred_image_is_blurrier_than_its_source_at_any_working_size(
    tmp_path: Path, working_size: int, cells: int
) -> None:
    sharp = texture(5, (400, 300), cells)
    sharp.save(tmp_path / "sharp.png")
    sharp.filter(ImageFilter.GaussianBlur(2)).save(tmp_path / "blurred.png")
    a, b = (
        image_features(tmp_path / name, MAX_PIXELS, "phash", working_size)
        for name in ("sharp.png", "blurred.png")
    )
    assert b.sharpness < a.sharpness


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
@example(1, 1, 0)
def test_laplacian_variance_equals_numpys_variance_of_the_laplacian(
    height: int, width: int, seed: int
) -> None:
    grey = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    # 4-neighbour Laplacian by hand, borders mirrored without repeating the edge (OpenCV's
    # default); along a 1-pixel side the pixel is its own mirror image
    padded = grey.astype(np.int64)
    for axis, side in enumerate((height, width)):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (1, 1)
        padded = np.pad(padded, pad, mode="reflect" if side > 1 else "edge")
    centre = padded[1:-1, 1:-1]
    laplacian = (
        padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * centre
    )
    assert checks.laplacian_variance(grey) == pytest.approx(np.var(laplacian), rel=1e-12, abs=1e-9)


@pytest.mark.parametrize(("working_size", "expected"), [(0, (300, 400)), (100, (75, 100))])
def test_sharpness_is_measured_at_working_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, working_size: int, expected: tuple[int, int]
) -> None:
    # The cost of the Laplacian (and percentiles) follows the working size, not the file.
    shapes: list[tuple[int, ...]] = []
    laplacian = cv2.Laplacian

    def spy(src: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        shapes.append(src.shape)
        return laplacian(src, *args, **kwargs)

    monkeypatch.setattr(checks.cv2, "Laplacian", spy)
    texture(6, (400, 300)).save(tmp_path / "big.png")
    image_features(tmp_path / "big.png", MAX_PIXELS, "phash", working_size)
    assert shapes == [expected]


def test_small_images_are_not_upscaled_to_working_size(tmp_path: Path) -> None:
    texture(7, (40, 30)).save(tmp_path / "small.png")
    native, working = (
        image_features(tmp_path / "small.png", MAX_PIXELS, "phash", size) for size in (0, 512)
    )
    assert native == working


# --- compute_features ------------------------------------------------------------------------


def _row(path: str, size: tuple[int, int] | None) -> dict[str, Any]:
    width, height = size or (None, None)
    return {"path": path, "width": width, "height": height, "is_unreadable_issue": size is None}


@pytest.mark.parametrize("workers", [1, 2])
def test_compute_features_keeps_row_order_and_skips_unreadable(
    tmp_path: Path, workers: int
) -> None:
    sizes = [(48, 48), (40, 30), (30, 40)]
    rows = []
    for index, size in enumerate(sizes):
        texture(10 + index, size).save(tmp_path / f"{index}.png")
        rows.append(_row(f"{index}.png", size))
    rows.insert(1, _row("broken.png", None))  # never opened: ingest found it unreadable
    params = clean_params(workers=workers)
    found = compute_features(tmp_path, rows, params)
    assert found[1] is None
    expected = [
        image_features(tmp_path / f"{i}.png", MAX_PIXELS, params.hash, params.working_size)
        for i in range(3)
    ]
    assert [found[0], found[2], found[3]] == expected


def test_an_image_changed_since_ingest_names_its_file(tmp_path: Path) -> None:
    texture(20, (64, 64)).save(tmp_path / "grown.png")
    rows = [_row("grown.png", (32, 32))]  # ingest saw a smaller image: now too many pixels
    params = clean_params(workers=1)
    with pytest.raises(ImageReadError, match=r"grown\.png"):
        compute_features(tmp_path, rows, params)


@pytest.mark.parametrize("workers", [1, 2])
def test_scratch_gets_previews_and_the_texture_spectra_of_readable_rows_in_row_order(
    tmp_path: Path, workers: int
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "scratch").mkdir()
    rows = []
    for index in range(20):  # more than one chunk
        texture(30 + index, (48, 40)).save(tmp_path / "images" / f"{index}.png")
        rows.append(_row(f"images/{index}.png", (48, 40)))
    rows.insert(3, _row("images/broken.png", None))
    found = compute_features(
        tmp_path, rows, clean_params(workers=workers), None, tmp_path / "scratch"
    )
    levels = read_spectra(tmp_path / "scratch")
    side = checks.PATCH
    shapes = [(side // 4 + 1, side // 8 + 1), (side // 2 + 1, side // 4 + 1), (side, side // 2 + 1)]
    assert [level.shape for level in levels] == [(21, *shape) for shape in shapes]
    assert not any(level[3].any() for level in levels)
    for row, feature in zip(rows, found, strict=True):
        if feature is None:
            continue
        grey = grey_u8(open_image(tmp_path / row["path"], MAX_PIXELS))
        expected = texture_levels(texture_spectra(verification_patch(grey)[None]))
        for level, values in zip(levels, expected, strict=True):
            assert np.allclose(level[rows.index(row)], values[0], atol=1e-6)
        assert feature.preview is not None and feature.preview.read()[:2] == b"\xff\xd8"


@pytest.mark.parametrize("unconfirmed", ["hash only", "check off"])
def test_no_spectra_are_made_unless_texture_confirms_near_duplicates(
    tmp_path: Path, unconfirmed: str
) -> None:
    texture(1).save(tmp_path / "a.png")
    params = clean_params(workers=1, near_duplicate_min_correlation=0.4)
    if unconfirmed == "hash only":
        params = params.model_copy(update={"near_duplicate_min_correlation": 0.0})
    else:
        params = with_actions(params, near_duplicate="off")
    found = compute_features(tmp_path, [_row("a.png", (48, 48))], params, None, tmp_path)
    assert found[0] is not None and found[0].preview is not None
    assert not list(tmp_path.glob("*.npy"))


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (10, 200), (48, 48), (400, 630), (5000, 20)])
def test_verification_patch_has_one_shape_for_any_image(shape: tuple[int, int]) -> None:
    grey = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert verification_patch(grey).shape == (checks.PATCH, checks.PATCH)


def test_small_images_are_mirrored_out_not_enlarged() -> None:
    grey = np.random.default_rng(0).integers(0, 256, (48, 40), dtype=np.uint8)
    patch = verification_patch(grey)
    assert np.array_equal(patch[8:56, 12:52], grey)


def test_a_half_size_copy_has_the_patch_of_its_original() -> None:
    """Patches are cut at one scale, so a downscaled copy still matches its original."""
    big = np.asarray(texture(5, (640, 512), cells=100).convert("L"))
    half = cv2.resize(big, (320, 256), interpolation=cv2.INTER_AREA)
    other = np.asarray(texture(6, (640, 512), cells=100).convert("L"))
    patches = np.stack([verification_patch(g) for g in (big, half, other)])
    same, different = patch_correlation(patches, np.array([[0, 1], [0, 2]]))
    assert same > 0.8
    assert different < 0.2


# --- scores ----------------------------------------------------------------------------------

FINITE = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    sharpness=FINITE,
    absolute=FINITE,
    median=FINITE,
    relative=st.floats(min_value=0.0, max_value=1.0),
)
@example(sharpness=math.nextafter(1.0, 0.0), absolute=1.0, median=0.0, relative=0.0)
@example(sharpness=1.0, absolute=1.0, median=0.0, relative=0.0)
@example(sharpness=0.0, absolute=0.0, median=0.0, relative=0.5)
@example(sharpness=29.0, absolute=20.0, median=300.0, relative=0.1)
def test_blur_score_is_above_half_exactly_below_the_limit(
    sharpness: float, absolute: float, median: float, relative: float
) -> None:
    score = blur_score(sharpness, absolute, median, relative)
    assert 0.0 <= score <= 1.0
    assert (score > 0.5) == (sharpness < max(absolute, relative * median))


@settings(max_examples=200, deadline=None)
@given(a=FINITE, b=FINITE, absolute=FINITE, median=FINITE)
def test_blur_score_is_higher_for_the_blurrier_image(
    a: float, b: float, absolute: float, median: float
) -> None:
    low, high = sorted((a, b))
    assert blur_score(low, absolute, median, 0.1) >= blur_score(high, absolute, median, 0.1)


def test_brightness_scores_at_the_ends() -> None:
    assert (dark_score(0.0), dark_score(1.0)) == (1.0, 0.0)
    assert (light_score(0.0), light_score(1.0)) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("width", "height", "min_side", "score"),
    [
        (48, 48, 32, 0.0),  # square and large enough
        (32, 32, 32, 0.0),
        (16, 16, 32, 0.5),  # short side half of min_side
        (200, 20, 32, 0.9),  # elongated: 1 - 20/200
        (20, 200, 32, 0.9),  # either orientation
        (100, 25, 1, 0.75),
        (1, 1, 1, 0.0),
        (1, 1000, 1, 0.999),
    ],
)
def test_odd_size_score(width: int, height: int, min_side: int, score: float) -> None:
    assert odd_size_score(width, height, min_side) == pytest.approx(score)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10_000), st.integers(1, 10_000), st.integers(1, 2_000))
def test_odd_size_score_lies_in_0_1_and_ignores_orientation(w: int, h: int, m: int) -> None:
    score = odd_size_score(w, h, m)
    assert 0.0 <= score < 1.0
    assert score == odd_size_score(h, w, m)
    assert (score == 0.0) == (w == h and w >= m)


def _scored(
    params: CleanParams, feature: Features | None, size: tuple[int, int] = (48, 48)
) -> dict[str, Any]:
    issue: dict[str, Any] = {"width": size[0], "height": size[1]}
    score_checks(issue, feature, 100.0, params)
    return issue


def test_dark_boundary_is_inclusive() -> None:
    params = clean_params(dark_threshold=0.75)  # exact in binary: no rounding at the edge
    assert _scored(params, features(p05=0.0, p95=0.25))["is_dark_issue"] is True
    assert _scored(params, features(p05=0.0, p95=0.25 + 1e-9))["is_dark_issue"] is False


@pytest.mark.parametrize(
    ("level", "is_dark", "is_light"),
    [
        (0, True, False),
        (38, True, False),
        (39, False, False),
        (229, False, False),
        (230, False, True),
        (255, False, True),
    ],
)
def test_dark_and_light_on_uniform_images(
    tmp_path: Path, level: int, is_dark: bool, is_light: bool
) -> None:
    # 1 - 38/255 = 0.851 >= 0.85 but 1 - 39/255 = 0.847; 230/255 = 0.902 >= 0.9 but 229/255 < 0.9
    Image.new("L", (40, 40), level).save(tmp_path / "flat.png")
    found = image_features(tmp_path / "flat.png", MAX_PIXELS, "phash", 512)
    issue = _scored(clean_params(), found)
    assert (issue["is_dark_issue"], issue["is_light_issue"]) == (is_dark, is_light)


def test_light_boundary_is_inclusive() -> None:
    params = clean_params(light_threshold=0.875)
    assert _scored(params, features(p05=0.875, p95=1.0))["is_light_issue"] is True
    below = math.nextafter(0.875, 0.0)
    assert _scored(params, features(p05=below, p95=1.0))["is_light_issue"] is False


def test_odd_size_boundary_is_inclusive() -> None:
    params = clean_params(odd_size_threshold=0.75, odd_size_min_side=1)
    assert _scored(params, features(), (100, 25))["is_odd_size_issue"] is True
    assert _scored(params, features(), (100, 26))["is_odd_size_issue"] is False
    params = clean_params(odd_size_threshold=0.5, odd_size_min_side=32)
    assert _scored(params, features(), (16, 16))["is_odd_size_issue"] is True
    assert _scored(params, features(), (17, 17))["is_odd_size_issue"] is False


def test_blur_boundary_is_strict_and_uses_the_class_median() -> None:
    # limit = max(20, 0.1 x class median 100) = 20
    params = clean_params(blur_absolute=20.0, blur_relative=0.1)
    assert _scored(params, features(sharpness=20.0))["is_blur_issue"] is False
    assert _scored(params, features(sharpness=19.999))["is_blur_issue"] is True
    # limit = max(5, 0.5 x 100) = 50: relative to the class
    params = clean_params(blur_absolute=5.0, blur_relative=0.5)
    assert _scored(params, features(sharpness=49.0))["is_blur_issue"] is True
    assert _scored(params, features(sharpness=50.0))["is_blur_issue"] is False


def test_scored_checks_on_a_clean_image_find_nothing() -> None:
    issue = _scored(clean_params(), features(p05=0.2, p95=0.8, sharpness=500.0))
    for check in SCORED:
        assert 0.0 <= issue[f"{check}_score"] <= 1.0
        assert issue[f"is_{check}_issue"] is False


@pytest.mark.parametrize("check", SCORED)
def test_a_check_that_is_off_has_no_score_and_never_fires(check: str) -> None:
    # The feature would fire every check: black, white at the same time, flat, elongated.
    firing = features(p05=1.0, p95=0.0, sharpness=0.0)
    on = _scored(clean_params(), firing, (200, 20))
    assert all(on[f"is_{name}_issue"] for name in SCORED)
    off = _scored(with_actions(clean_params(), **{check: "off"}), firing, (200, 20))
    assert off[f"{check}_score"] is None
    assert off[f"is_{check}_issue"] is False
    for other in set(SCORED) - {check}:
        assert off[f"is_{other}_issue"] is True


def test_an_unreadable_image_has_no_scores() -> None:
    issue = _scored(clean_params(), None)
    for check in SCORED:
        assert issue[f"{check}_score"] is None
        assert issue[f"is_{check}_issue"] is False


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 255), min_size=1, max_size=300),
    st.lists(st.floats(0, 100), min_size=1, max_size=4),
)
def test_histogram_percentiles_equal_numpy_percentiles(values: list[int], qs: list[float]) -> None:
    grey = np.array(values, dtype=np.uint8).reshape(-1, 1)
    assert checks._percentiles(grey, qs) == pytest.approx(np.percentile(grey, qs).tolist())
