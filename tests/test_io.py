"""Tests of pipeline.io: one read gives the file hash and fully decoded pixels, or a reason."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.io import (
    ImageReadError,
    decode,
    grey_u8,
    inspect_image,
    load_rgb,
    open_grey,
    open_image,
    pixel_sha256,
    preview_jpeg,
)

MAX_PIXELS = 1_000_000


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)  # (H, W, 3)
    return Image.fromarray(pixels).convert(mode)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode"), [("PNG", "RGB"), ("JPEG", "L"), ("BMP", "RGB"), ("TIFF", "RGBA")]
)
def test_inspect_image_records_size_mode_format_and_file_hash(
    tmp_path: Path, fmt: str, mode: str
) -> None:
    data = encode(random_image(13, 7, mode), fmt)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    facts = inspect_image(path, MAX_PIXELS)
    assert facts.reason is None
    assert (facts.width, facts.height, facts.mode, facts.format) == (13, 7, mode, fmt)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()


def _truncated_png() -> bytes:
    data = encode(random_image(30, 20), "PNG")
    return data[: len(data) // 2]


def _truncated_jpeg() -> bytes:
    data = encode(random_image(30, 20), "JPEG")
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "zero-byte"),
        (_truncated_png(), "truncated"),
        (_truncated_jpeg(), "truncated"),
        (b"just some text, not an image\n", "not a recognised image format"),
    ],
    ids=["zero-byte", "truncated-png", "truncated-jpeg", "text"],
)
def test_unreadable_bytes_come_back_as_a_reason_not_an_exception(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    facts = inspect_image(path, MAX_PIXELS)
    assert facts.reason is not None
    assert expected in facts.reason.lower()
    # No pixels were decoded, so nothing but the hash is recorded.
    assert (facts.width, facts.height, facts.mode, facts.format) == (None, None, None, None)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()


def test_image_over_max_pixels_is_refused_with_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encode(random_image(40, 30), "PNG"))
    facts = inspect_image(path, max_pixels=40 * 30 - 1)
    assert facts.reason is not None
    assert "40x30" in facts.reason
    assert "max_pixels" in facts.reason
    # The check is on the pixel count, so exactly max_pixels still decodes.
    assert inspect_image(path, max_pixels=40 * 30).reason is None


def test_decode_loads_all_pixels(tmp_path: Path) -> None:
    original = random_image(9, 5, seed=4)
    image = decode(encode(original, "PNG"), MAX_PIXELS)
    assert np.array_equal(np.asarray(image), np.asarray(original))


def exif_rotated(upright: Image.Image, fmt: str) -> bytes:
    """Bytes whose stored pixels are `upright` turned 90 degrees anticlockwise, with EXIF
    orientation 6 (a viewer turns them 90 degrees clockwise: upright again)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(upright.transpose(Image.Transpose.ROTATE_90), fmt, exif=exif)


def test_exif_orientation_is_applied_so_pixels_and_size_are_upright(tmp_path: Path) -> None:
    upright = random_image(13, 7, seed=5)
    path = tmp_path / "turned.png"
    path.write_bytes(exif_rotated(upright, "PNG"))
    image = decode(path.read_bytes(), MAX_PIXELS)
    assert np.array_equal(np.asarray(image), np.asarray(upright))
    facts = inspect_image(path, MAX_PIXELS)
    assert (facts.width, facts.height, facts.format) == (13, 7, "PNG")
    # an EXIF-rotated copy is the same picture: an exact duplicate of the upright file
    assert pixel_sha256(image) == pixel_sha256(decode(encode(upright, "PNG"), MAX_PIXELS))


def test_exif_rotated_jpeg_decodes_upright(tmp_path: Path) -> None:
    upright = Image.new("L", (40, 10), 0)
    upright.paste(255, (0, 0, 10, 10))  # white square at the left end
    image = decode(exif_rotated(upright, "JPEG"), MAX_PIXELS)
    assert image.size == (40, 10)
    pixels = np.asarray(image, dtype=int)
    assert pixels[:, :10].mean() > 200 and pixels[:, 20:].mean() < 50
    assert image.format == "JPEG"


def test_open_image_names_the_file_that_fails(tmp_path: Path) -> None:
    path = tmp_path / "gone-bad.jpg"
    path.write_bytes(_truncated_jpeg())
    with pytest.raises(ImageReadError, match=r"gone-bad\.jpg"):
        open_image(path, MAX_PIXELS)
    with pytest.raises(ImageReadError, match=r"missing\.png"):
        open_image(tmp_path / "missing.png", MAX_PIXELS)


def _grey_jpeg(path: Path, exif: Image.Exif | None = None, seed: int = 7) -> Image.Image:
    """A 33 x 21 greyscale JPEG of smooth texture plus noise written to `path`; the image."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(21) * 4.0, np.arange(33) * 3.0)
    pixels = np.clip(ramp + rng.normal(0, 25, ramp.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "L")
    image.save(path, quality=90, **({"exif": exif} if exif is not None else {}))
    return image


@pytest.mark.parametrize("orientation", [None, 1, 6, 3])
def test_open_grey_gives_pillows_upright_pixels_of_a_greyscale_jpeg(
    tmp_path: Path, orientation: int | None
) -> None:
    exif = None
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
    _grey_jpeg(tmp_path / "grey.jpg", exif)
    image, grey = open_grey(tmp_path / "grey.jpg", MAX_PIXELS)
    expected = open_image(tmp_path / "grey.jpg", MAX_PIXELS)
    assert (image.mode, image.size) == ("L", expected.size)
    assert expected.size == ((21, 33) if orientation == 6 else (33, 21))
    assert np.array_equal(grey, np.asarray(expected))
    assert np.array_equal(np.asarray(image), grey)
    assert pixel_sha256(image, grey) == pixel_sha256(expected)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "I;16", "1"])
def test_open_grey_of_other_images_is_grey_u8_of_open_image(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "x.png"
    random_image(17, 9, mode, seed=3).save(path)
    image, grey = open_grey(path, MAX_PIXELS)
    expected = open_image(path, MAX_PIXELS)
    assert image.mode == mode
    assert np.array_equal(grey, grey_u8(expected))


def test_open_grey_reports_a_truncated_greyscale_jpeg(tmp_path: Path) -> None:
    _grey_jpeg(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match=r"cut\.jpg.*truncated"):
        open_grey(tmp_path / "cut.jpg", MAX_PIXELS)


def test_pixel_sha256_is_the_same_for_a_png_resaved_with_other_compression() -> None:
    image = random_image(16, 12, seed=1)
    fast = encode(image, "PNG", compress_level=0)
    small = encode(image, "PNG", compress_level=9, optimize=True)
    assert fast != small  # the files differ ...
    first, second = decode(fast, MAX_PIXELS), decode(small, MAX_PIXELS)
    assert pixel_sha256(first) == pixel_sha256(second)  # ... the pixels do not


def test_pixel_sha256_changes_with_one_pixel() -> None:
    image = random_image(16, 12, seed=1)
    changed = image.copy()
    red, green, blue = changed.getpixel((3, 4))  # type: ignore[misc]
    changed.putpixel((3, 4), ((red + 1) % 256, green, blue))
    assert pixel_sha256(image) != pixel_sha256(changed)


def test_pixel_sha256_tells_apart_same_bytes_in_another_shape_or_mode() -> None:
    grey = Image.frombytes("L", (4, 6), bytes(range(24)))
    assert pixel_sha256(grey, grey_u8(grey)) == pixel_sha256(grey)  # its bytes, uncopied
    assert pixel_sha256(grey) != pixel_sha256(Image.frombytes("L", (6, 4), bytes(range(24))))
    assert pixel_sha256(grey) != pixel_sha256(Image.frombytes("P", (4, 6), bytes(range(24))))


def test_pixel_sha256_tells_apart_palette_images_with_other_colours() -> None:
    indices = bytes([0, 1, 1, 0] * 4)
    black_white = Image.frombytes("P", (4, 4), indices)
    black_white.putpalette([0, 0, 0, 255, 255, 255])
    red_blue = Image.frombytes("P", (4, 4), indices)
    red_blue.putpalette([255, 0, 0, 0, 0, 255])
    assert pixel_sha256(black_white) != pixel_sha256(red_blue)


def test_load_rgb_converts_and_resizes(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    random_image(20, 10, "L").save(path)
    array = load_rgb(path, 8, MAX_PIXELS)
    assert array.shape == (8, 8, 3)
    assert array.dtype == np.uint8
    # A grey source stays grey after conversion: the three channels are equal.
    assert np.array_equal(array[..., 0], array[..., 1])
    assert np.array_equal(array[..., 1], array[..., 2])


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "F"])
@pytest.mark.parametrize(("size", "expected"), [((400, 100), (160, 40)), ((30, 20), (30, 20))])
def test_preview_is_a_jpeg_shrunk_to_fit_keeping_the_aspect(
    mode: str, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    image = random_image(*size, seed=6).convert("L" if mode in ("I;16", "F") else mode)
    if mode in ("I;16", "F"):
        image = Image.fromarray(
            np.asarray(image, dtype=np.uint16 if mode == "I;16" else np.float32)
        )
    grey = np.asarray(random_image(*size, mode="L", seed=6))
    preview = Image.open(io.BytesIO(preview_jpeg(image, grey, 160)))
    assert preview.format == "JPEG"
    assert preview.size == expected
    assert preview.mode == ("L" if mode in ("L", "I;16", "F") else "RGB")


def test_preview_keeps_the_colours() -> None:
    red = Image.new("RGB", (64, 32), (220, 20, 20))
    preview = Image.open(io.BytesIO(preview_jpeg(red, np.zeros((32, 64), np.uint8), 160)))
    r, g, b = np.asarray(preview.convert("RGB"), dtype=int).reshape(-1, 3).mean(axis=0)
    assert r > 180 and g < 60 and b < 60
