"""Image decoding: one read of the file bytes gives its sha256 and its fully decoded pixels.

Pixels come upright as a viewer shows them: an EXIF orientation tag (cameras and phones write
one instead of rotating the pixels) is applied at decode, so sizes, hashes, checks, boxes and
training all see the image the inspector sees (an EXIF-rotated copy is an exact duplicate).

A file that cannot be decoded is not an exception for the pipeline but a finding: `inspect_image`
returns the reason so the manifest can record it.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import ApexLoopError

_ORIENTATION = 0x0112  # EXIF tag; 1 = upright
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")  # scaled by 1/257 to 8 bits
_WIDE = ("I", "F")  # 32-bit integer and float: stretched from their range onto 0..255

# Errors Pillow raises for files that are not (complete, sane) images.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
)


class ImageReadError(ApexLoopError):
    """The file is not a decodable image; the message says why."""


@dataclass(frozen=True)
class ImageFacts:
    """What ingest records about one file; `reason` is set when it is unreadable."""

    sha256: str
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    reason: str | None = None


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes completely; raise ImageReadError with the reason on any failure."""
    return _decode(data, max_pixels, fast_grey_jpeg=False)[0]


def _decode(
    data: bytes, max_pixels: int, fast_grey_jpeg: bool
) -> tuple[Image.Image, np.ndarray | None]:
    """decode(); with `fast_grey_jpeg`, a greyscale JPEG without an EXIF rotation is decoded by
    OpenCV straight into an array, returned with an image sharing its pixels (else None)."""
    if not data:
        raise ImageReadError("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise ImageReadError(
                    f"{image.width}x{image.height} = {pixels} pixels exceeds max_pixels "
                    f"{max_pixels} (possible decompression bomb)"
                )
            if fast_grey_jpeg and image.format == "JPEG" and image.mode == "L":
                grey = _grey_jpeg(data, image)
                if grey is not None:
                    return Image.fromarray(grey), grey
            image.load()
            if image.getexif().get(_ORIENTATION, 1) != 1:
                upright = ImageOps.exif_transpose(image)
                upright.format = image.format
                image = upright
    except ImageReadError:
        raise
    except Image.DecompressionBombWarning as exc:
        raise ImageReadError(f"possible decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        # Pillow's own message names only the in-memory buffer, which tells the user nothing.
        raise ImageReadError(
            "not a recognised image format (no image decoder accepts its first bytes)"
        ) from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    return image, None


def _grey_jpeg(data: bytes, header: Image.Image) -> np.ndarray | None:
    """The pixels of a greyscale JPEG (opened, not yet loaded, as `header`) decoded by OpenCV:
    both bundle libjpeg-turbo, whose integer IDCT gives Pillow's pixels exactly, and the
    array needs no copy out of Pillow. None where OpenCV does not give the whole upright
    image, so that Pillow decides: an EXIF rotation (Pillow applies it), or a failure (a
    truncated file, which Pillow reports)."""
    if header.getexif().get(_ORIENTATION, 1) != 1:
        return None
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if grey is None or grey.dtype != np.uint8 or grey.shape != (header.height, header.width):
        return None
    return grey


def inspect_image(path: Path, max_pixels: int) -> ImageFacts:
    """Hash the file bytes and decode them once; unreadable files come back with a reason."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = decode(data, max_pixels)
    except ImageReadError as exc:
        return ImageFacts(sha256=digest, reason=str(exc))
    return ImageFacts(digest, image.width, image.height, image.mode, image.format)


def open_image(path: Path, max_pixels: int) -> Image.Image:
    """Decode a file that ingest found readable; a failure now names the file."""
    return _open(path, max_pixels, fast_grey_jpeg=False)[0]


def open_grey(path: Path, max_pixels: int) -> tuple[Image.Image, np.ndarray]:
    """open_image() and the image's 8-bit grey pixels (grey_u8), the clean stage's one decode:
    a greyscale JPEG (what most inspection cameras write) is decoded straight into the array,
    a tenth faster."""
    image, grey = _open(path, max_pixels, fast_grey_jpeg=True)
    return image, grey if grey is not None else grey_u8(image)


def _open(
    path: Path, max_pixels: int, fast_grey_jpeg: bool
) -> tuple[Image.Image, np.ndarray | None]:
    try:
        return _decode(path.read_bytes(), max_pixels, fast_grey_jpeg)
    except (ImageReadError, OSError) as exc:
        raise ImageReadError(f"{path}: {exc}") from None


def pixel_sha256(image: Image.Image, grey: np.ndarray | None = None) -> str:
    """Hash of the decoded pixels (mode and size included): re-saved copies hash the same.

    Palette images hash their palette too: the same indices with other colours are other pixels.
    `grey`: an 8-bit grey image's pixels from grey_u8 when at hand (its bytes, without a copy).
    """
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    if image.mode in ("P", "PA"):
        digest.update(bytes(image.getpalette() or []))
    pixels = grey if image.mode == "L" and grey is not None else None
    digest.update(image.tobytes() if pixels is None else np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


def grey_u8(image: Image.Image) -> np.ndarray:
    """8-bit grey pixels (H, W) for any mode, 16-bit and float images scaled, not clipped."""
    if image.mode in _SIXTEEN_BIT:
        return (np.asarray(image, dtype=np.float32) / 257.0).round().astype(np.uint8)
    if image.mode in _WIDE:
        values = np.asarray(image, dtype=np.float64)
        # NaN / inf pixels (no-data in float images) must not poison the range of the rest.
        finite = np.isfinite(values)
        low, high = (
            (float(values[finite].min()), float(values[finite].max()))
            if finite.any()
            else (0.0, 0.0)
        )
        scale = 255.0 / (high - low) if high > low else 0.0
        return (np.where(finite, values - low, 0.0) * scale).round().astype(np.uint8)
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8)  # no conversion copy
    return np.asarray(image.convert("L"), dtype=np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in RGB; 16-bit, integer and float images through `grey_u8` (Pillow's own
    conversion clips their values at 255, which turns a 16-bit image white)."""
    if image.mode in (*_SIXTEEN_BIT, *_WIDE):
        return Image.fromarray(grey_u8(image)).convert("RGB")
    return image.convert("RGB")


def preview_jpeg(image: Image.Image, grey: np.ndarray, side: int) -> bytes:
    """A small JPEG (longest side at most `side`) of a decoded image for people to look at:
    colour images in colour, all others by `grey`, their 8-bit grey pixels (H, W)."""
    colour = image.mode in ("P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")
    pixels = np.asarray(image.convert("RGB")) if colour else grey
    # an integer box filter does most of the shrinking (cheap, no aliasing; the few edge rows
    # and columns that do not fill a box are left out), bilinear the rest
    factor = max(1, max(pixels.shape[:2]) // side)
    if factor > 1:
        height, width = (length // factor for length in pixels.shape[:2])
        pixels = cv2.resize(
            pixels[: height * factor, : width * factor],
            (width, height),
            interpolation=cv2.INTER_AREA,
        )
    height, width = pixels.shape[:2]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR) if scale < 1 else pixels
    if colour:
        small = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)  # OpenCV's channel order
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ImageReadError(f"cannot encode a {image.width}x{image.height} preview")
    return encoded.tobytes()


def load_rgb(path: Path, size: int, max_pixels: int) -> np.ndarray:
    """Decode, convert to RGB and resize to size x size. Returns uint8 (size, size, 3)."""
    image = to_rgb(open_image(path, max_pixels))
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
