"""Issue 8's bad-input catalogue: each kind of bad input a user can hand the pipeline, given to
the real entry point of the stage that meets it (`stages.<name>.main` with the arguments
dvc.yaml declares, in-process, in a tiny project in tmp_path built from real files).

Every case ends in one of two ways:
  refused   exit code 2 and one logged error, no traceback, that names the offending file, row
            or key and says what to do; the stage writes none of its outputs;
  recorded  exit code 0 and the offending image in the output manifest with its flag and reason
            (or the values that show how it was read); every input row is still there.

The table CASES is the catalogue: one Case per input, its `why` in one line, and the outcome.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import os
import re
import shlex
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, render, run_dvc_stages, table_source
from PIL import Image

from pipeline.io import load_rgb
from pipeline.manifest import read_manifest

DVC_STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
GOOD = [f"g{i}.png" for i in range(4)]
SCRATCH = [f"s{i}.png" for i in range(4)]
IMAGES_IN = len(GOOD) + len(SCRATCH)  # rows of the base data set
SIDE = 32  # pixels: not an odd size for clean (odd_size_min_side 32), enough for training


# --- the project a case builds ---------------------------------------------------------------


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied, nested mappings merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) else value
    return out


def noise(size: tuple[int, int], seed: int) -> np.ndarray:
    """Seeded RGB noise of `size` (width, height): uint8 (H, W, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


class Project:
    """A tiny project: params.yaml and the stage outputs under `work` (paths as dvc.yaml declares
    them), the data set under `work/raw`: images/ and labels.csv (path, label, group)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.root = work / "raw"
        self.images = self.root / "images"
        self.images.mkdir(parents=True)
        base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        self.values: dict[str, Any] = base
        # the repository's params, made small and fast
        self.params(
            **{
                "ingest": {**table_source(self.root), "classes": ["good", "scratch"]},
                "clean": {
                    "workers": 1,
                    "overrides": str(REPO / base["clean"]["overrides"]),
                    "actions": {"label": "off"},
                },
                "train": {"epochs": 1, "image_size": SIDE, "batch_size": 4, "color_jitter": 0.0},
            }
        )

    def params(self, **changes: Mapping[str, Any]) -> None:
        """Merge `changes` into the params and write params.yaml."""
        self.values = _merge(self.values, changes)
        self.write_params(yaml.safe_dump(self.values, sort_keys=False))

    def write_params(self, text: str) -> None:
        (self.work / "params.yaml").write_text(text, encoding="utf-8")

    def image(self, name: str, size: tuple[int, int] = (SIDE, SIDE), seed: int = 0) -> Path:
        """Seeded noise saved under images/ in the format of the name's suffix."""
        path = self.images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise(size, seed)).save(path)
        return path

    def table(self, rows: Sequence[tuple[str, str]]) -> None:
        """labels.csv: the rows (path, label), each image a group of its own."""
        with (self.root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "group"])
            writer.writerows((path, label, "") for path, label in rows)

    def dataset(self, extra: Sequence[tuple[str, str]] = ()) -> None:
        """Four good and four scratch images (unrelated noise) and the table listing them plus
        `extra` rows, whose files the case makes."""
        for seed, name in enumerate(GOOD + SCRATCH):
            self.image(name, seed=seed)
        self.table([*((n, "good") for n in GOOD), *((n, "scratch") for n in SCRATCH), *extra])

    def run(self, *stages: str) -> None:
        """Run earlier stages as dvc.yaml declares them; each must succeed."""
        run_dvc_stages(self.work, only=stages)

    def argv(self, stage: str) -> list[str]:
        """The stage's arguments from its dvc.yaml command, rendered with the params last
        written by `params` (a case may break params.yaml afterwards)."""
        return shlex.split(render(DVC_STAGES[stage]["cmd"], self.values))[3:]

    def outputs(self, stage: str) -> list[Path]:
        """Every out, metric and plot that dvc.yaml declares for the stage."""
        declared = DVC_STAGES[stage]
        entries = [*declared.get("outs", []), *declared.get("metrics", [])]
        entries += declared.get("plots", [])
        names = [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]
        return [self.work / render(name, self.values) for name in names]


# --- outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """Exit 2; the error names the offending file / row / key (`names`) and says what to do
    (`todo`), both regular expressions searched in the one logged error."""

    names: str
    todo: str


@dataclass(frozen=True)
class Recorded:
    """Exit 0; `manifest` (a `kind` manifest) holds `rows` rows, among them `path` with
    `fields` (a compiled pattern is searched in the value's text, anything else compared)."""

    manifest: str
    kind: str
    rows: int
    path: str
    fields: Mapping[str, Any]
    warning: str | None = None  # a logged warning that must match, where the stage skips links


@dataclass(frozen=True)
class Case:
    id: str
    why: str
    stage: str
    build: Callable[[Project], None]
    expect: Refused | Recorded


INGEST_OUT = "data/interim/ingest.parquet"
ISSUES_OUT = "data/interim/issues.parquet"


def unreadable(path: str, reason: str) -> Recorded:
    """The ingest manifest keeps `path` (one extra row) as unreadable with a matching reason."""
    fields = {"is_unreadable_issue": True, "unreadable_reason": re.compile(reason)}
    return Recorded(INGEST_OUT, "images", IMAGES_IN + 1, path, fields)


# --- builders: images and files ----------------------------------------------------------------


def with_file(
    name: str, data: bytes | Callable[[], bytes], label: str = "good"
) -> Callable[[Project], None]:
    """A builder: the base data set plus one file `name` holding `data`, listed in the table."""

    def build(p: Project) -> None:
        p.dataset([(name, label)])
        (p.images / name).write_bytes(data() if callable(data) else data)

    return build


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    data = encoded(Image.fromarray(noise((SIDE, SIDE), 50)), "JPEG")
    return data[: len(data) // 2]


def png_with_bad_crc(chunk: bytes) -> Callable[[], bytes]:
    """A PNG whose `chunk` no longer matches its CRC. IHDR: one CRC byte flipped. IDAT: one
    byte of the compressed pixels flipped (the usual corruption; a flipped IDAT CRC alone
    leaves the pixels intact, and zlib's own checksum vouches for them)."""

    def make() -> bytes:
        data = bytearray(encoded(Image.fromarray(noise((SIDE, SIDE), 51)), "PNG"))
        start = data.index(chunk) + 4  # chunk data follows the 4-byte type
        length = int.from_bytes(data[start - 8 : start - 4], "big")
        data[start + length if chunk == b"IHDR" else start + length // 2] ^= 0xFF
        return bytes(data)

    return make


def decompression_bomb() -> bytes:
    """A real one: an 8000 x 8000 grey PNG of zeros, 64 Mpixels in a few tens of kilobytes."""
    width = height = 8000

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    packer = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte 0, then the row's pixels
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def sixteen_bit(fmt: str) -> Callable[[], bytes]:
    """16-bit grey noise in 0..16383, a mid-dark image (clipped to 8 bits it would be white)."""
    pixels = np.random.default_rng(59).integers(0, 16384, (SIDE, SIDE), dtype=np.uint16)
    return lambda: encoded(Image.fromarray(pixels), fmt)


def cmyk_jpeg() -> bytes:
    return encoded(Image.fromarray(noise((SIDE, SIDE), 52)).convert("CMYK"), "JPEG")


def exif_rotated_jpeg() -> bytes:
    """48 wide, 32 high as stored, with EXIF orientation 6 (shown rotated: 32 wide, 48 high)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.fromarray(noise((48, 32), 53)), "JPEG", exif=exif)


# --- builders: sources and tables ------------------------------------------------------------


def folders(p: Project) -> None:
    """The base images as class folders (source: folders)."""
    for seed, name in enumerate(GOOD):
        p.image(f"good/{name}", seed=seed)
    for seed, name in enumerate(SCRATCH, start=len(GOOD)):
        p.image(f"scratch/{name}", seed=seed)
    p.params(ingest={"source": "folders", "table": None, "group_column": None})


def link_inside_class_folder(p: Project) -> None:
    folders(p)
    os.symlink(p.images / "good", p.images / "good" / "loop", target_is_directory=True)


def link_as_class_folder(p: Project) -> None:
    folders(p)
    os.symlink(p.images, p.images / "loop", target_is_directory=True)


def link_loop_in_table_path(p: Project) -> None:
    p.dataset([("loop/x.png", "good")])
    os.symlink("loop", p.images / "loop")  # a link to itself: resolving it never ends


def non_utf8_name(p: Project) -> None:
    folders(p)
    name = os.fsencode(p.images / "scratch") + b"/bad\xff.png"
    descriptor = os.open(name, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(descriptor, encoded(Image.fromarray(noise((SIDE, SIDE), 54)), "PNG"))
    os.close(descriptor)


def escaping_path(p: Project) -> None:
    p.dataset([("../outside.png", "good")])
    Image.fromarray(noise((SIDE, SIDE), 55)).save(p.root / "outside.png")


def absolute_path(p: Project) -> None:
    outside = p.work / "elsewhere.png"
    Image.fromarray(noise((SIDE, SIDE), 56)).save(outside)
    p.dataset([(str(outside), "good")])


def table_not_utf8(p: Project) -> None:
    p.dataset()
    rows = "path,label,group\n" + "".join(f"{n},good,\n" for n in GOOD) + "café.png,good,\n"
    (p.root / "labels.csv").write_bytes(rows.encode("latin-1"))


def mask_of_other_size(p: Project) -> None:
    p.dataset()
    (p.root / "masks").mkdir()
    Image.fromarray(np.full((SIDE // 2, SIDE // 2), 255, dtype=np.uint8)).save(
        p.root / "masks" / "s0.png"
    )
    p.params(ingest={"masks": "masks"})


# --- builders: stage chains ------------------------------------------------------------------


def ingested(build: Callable[[Project], None]) -> Callable[[Project], None]:
    """`build`, then ingest."""

    def chain(p: Project) -> None:
        build(p)
        p.run("ingest")

    return chain


def split_input(p: Project) -> None:
    """The base data set, ingested and cleaned."""
    p.dataset()
    p.run("ingest", "clean")


def split_done(p: Project) -> None:
    """The base data set, ingested, cleaned and split."""
    p.dataset()
    p.run("ingest", "clean", "split")


def emptied_class(p: Project) -> None:
    """Every scratch file is zero bytes: clean removes them all (unreadable)."""
    p.dataset()
    for name in SCRATCH:
        (p.images / name).write_bytes(b"")
    p.run("ingest", "clean")


def one_scratch_image(p: Project) -> None:
    for seed, name in enumerate(GOOD):
        p.image(name, seed=seed)
    p.image(SCRATCH[0], seed=9)
    p.table([*((n, "good") for n in GOOD), (SCRATCH[0], "scratch")])
    p.run("ingest", "clean")


def all_good(p: Project) -> None:
    for seed, name in enumerate(GOOD + SCRATCH):
        p.image(name, seed=seed)
    p.table([(n, "good") for n in GOOD + SCRATCH])
    p.params(ingest={"classes": None})  # inferred from the labels: just 'good'
    p.run("ingest", "clean")


def clean_manifest(p: Project) -> Path:
    return p.work / "data/interim/clean.parquet"


def truncate_clean_manifest(p: Project) -> None:
    split_input(p)
    data = clean_manifest(p).read_bytes()
    clean_manifest(p).write_bytes(data[: len(data) // 2])


def garble_clean_manifest(p: Project) -> None:
    """Overwrite the column data in the middle of the file; header and footer stay intact."""
    split_input(p)
    data = bytearray(clean_manifest(p).read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for index in range(4, len(data) - footer):
        data[index] = (data[index] * 31 + 7) % 256
    clean_manifest(p).write_bytes(bytes(data))


def older_schema_version(p: Project) -> None:
    """clean.parquet as an older pipeline wrote it: same rows, metadata says version 1."""
    split_input(p)
    table = pq.read_table(clean_manifest(p))
    meta = json.loads(table.schema.metadata[b"apexloop"])
    meta["version"] = 1
    pq.write_table(
        table.replace_schema_metadata({b"apexloop": json.dumps(meta).encode()}), clean_manifest(p)
    )


def missing_clean_manifest(p: Project) -> None:
    split_input(p)
    clean_manifest(p).unlink()


def with_params(**changes: Mapping[str, Any]) -> Callable[[Project], None]:
    """A builder: only params.yaml, with `changes` (the stage must stop before reading data)."""
    return lambda p: p.params(**changes)


def then_params(
    build: Callable[[Project], None], **changes: Mapping[str, Any]
) -> Callable[[Project], None]:
    def chain(p: Project) -> None:
        build(p)
        p.params(**changes)

    return chain


def params_not_yaml(p: Project) -> None:
    p.write_params("ingest:\n  root: [unclosed\n  task: multiclass\n")


def section_removed(p: Project) -> None:
    values = dict(p.values)
    del values["train"]
    p.write_params(yaml.safe_dump(values, sort_keys=False))


# --- the catalogue -------------------------------------------------------------------------------

ROW_FIX = r"fix or delete these rows"

CASES = [
    # ingest: files that are not (sane) images are kept as unreadable rows with the reason
    Case(
        "zero_byte_file",
        "an empty file (a copy that never finished) is recorded, not skipped",
        "ingest",
        with_file("empty.png", b""),
        unreadable("images/empty.png", r"^zero-byte file$"),
    ),
    Case(
        "truncated_jpeg",
        "half a JPEG decodes partly: the full decode at ingest catches the missing end",
        "ingest",
        with_file("half.jpg", truncated_jpeg),
        unreadable("images/half.jpg", r"cannot decode: OSError: image file is truncated"),
    ),
    Case(
        "png_bad_crc_in_header",
        "a PNG whose header chunk fails its CRC is not opened as an image",
        "ingest",
        with_file("crc_header.png", png_with_bad_crc(b"IHDR")),
        unreadable("images/crc_header.png", r"not a recognised image format"),
    ),
    Case(
        "png_bad_crc_in_pixels",
        "a PNG with a flipped byte in its pixel data (IDAT CRC no longer matches) is unreadable",
        "ingest",
        with_file("crc_pixels.png", png_with_bad_crc(b"IDAT")),
        unreadable("images/crc_pixels.png", r"cannot decode: .*broken data stream"),
    ),
    Case(
        "text_file_named_jpg",
        "a text file with an image suffix is recorded as no image format",
        "ingest",
        with_file("notes.jpg", b"shot with the old camera, do not use\n"),
        unreadable("images/notes.jpg", r"not a recognised image format"),
    ),
    Case(
        "unsupported_format_gif",
        "a decodable GIF whose suffix is not in ingest.extensions is recorded, naming the key",
        "ingest",
        with_file("anim.gif", lambda: encoded(Image.fromarray(noise((SIDE, SIDE), 57)), "GIF")),
        unreadable("images/anim.gif", r"unsupported extension '\.gif' \(ingest\.extensions: "),
    ),
    Case(
        "decompression_bomb",
        "an image over ingest.max_pixels is recorded from its header, never decoded",
        "ingest",
        with_file("bomb.png", decompression_bomb),
        Recorded(
            INGEST_OUT,
            "images",
            IMAGES_IN + 1,
            "images/bomb.png",
            {
                "is_unreadable_issue": True,
                "unreadable_reason": re.compile(
                    r"8000x8000 = 64000000 pixels exceeds max_pixels 40000000 \(possible "
                    r"decompression bomb\)"
                ),
                "width": None,
            },
        ),
    ),
    Case(
        "exif_rotated_jpeg",
        "a JPEG stored 48x32 with EXIF orientation 6 is recorded upright, 32 wide and 48 high",
        "ingest",
        with_file("rotated.jpg", exif_rotated_jpeg),
        Recorded(
            INGEST_OUT,
            "images",
            IMAGES_IN + 1,
            "images/rotated.jpg",
            {"width": 32, "height": 48, "is_unreadable_issue": False},
        ),
    ),
    Case(
        "symlink_loop_inside_class_folder",
        "a folder linked to its own parent inside a class folder is not walked (no hang), said",
        "ingest",
        link_inside_class_folder,
        Recorded(
            INGEST_OUT,
            "images",
            IMAGES_IN,
            "images/good/g0.png",
            {"label": "good", "is_unreadable_issue": False},
            warning=r"good/loop.*not followed",
        ),
    ),
    Case(
        "symlink_loop_as_class_folder",
        "a class folder that links back to the image folder would ingest every image twice",
        "ingest",
        link_as_class_folder,
        Refused(
            r"images: class folder\(s\) \['loop'\] link back .*symlink loop", r"remove the link"
        ),
    ),
    Case(
        "symlink_loop_in_table_path",
        "a table path through a link to itself cannot be resolved: the row is named",
        "ingest",
        link_loop_in_table_path,
        Refused(r"(?i)labels\.csv row 10 \('loop/x\.png'\).*symlink loop", ROW_FIX),
    ),
    Case(
        "non_utf8_file_name",
        "a file name that is not UTF-8 cannot be stored in the manifest: named by its bytes",
        "ingest",
        non_utf8_name,
        Refused(r"b'scratch/bad\\xff\.png'.*not valid UTF-8", r"rename"),
    ),
    Case(
        "table_row_missing_file",
        "a table row whose image does not exist names the row",
        "ingest",
        lambda p: p.dataset([("missing.png", "good")]),
        Refused(r"labels\.csv row 10 \('missing\.png'\): file not found", ROW_FIX),
    ),
    Case(
        "table_path_escaping_root",
        "a ../ path pointing outside the image folder is refused",
        "ingest",
        escaping_path,
        Refused(r"row 10 \('\.\./outside\.png'\).*resolves outside the data root", ROW_FIX),
    ),
    Case(
        "table_absolute_path",
        "an absolute path in the table is refused (paths are relative to the image folder)",
        "ingest",
        absolute_path,
        Refused(r"row 10 \('/.*elsewhere\.png'\): .*expected a path relative to", ROW_FIX),
    ),
    Case(
        "duplicate_table_rows",
        "the same image listed twice is refused, naming both rows",
        "ingest",
        lambda p: p.dataset([(GOOD[1], "scratch")]),
        Refused(r"labels\.csv row 10 \('g1\.png'\): duplicate of row 3", ROW_FIX),
    ),
    Case(
        "unknown_class",
        "a label not in ingest.classes is refused, naming it and where it is",
        "ingest",
        with_file(
            "dent.png", lambda: encoded(Image.fromarray(noise((SIDE, SIDE), 58)), "PNG"), "dent"
        ),
        Refused(
            r"unknown class name\(s\) \['dent'\] \(e\.g\. in \['dent\.png'\]\)",
            r"add the class to ingest\.classes",
        ),
    ),
    Case(
        "table_not_utf8",
        "a table saved as Latin-1 is refused by name instead of a decoding traceback",
        "ingest",
        table_not_utf8,
        Refused(r"labels\.csv.*not UTF-8", r"save it as UTF-8"),
    ),
    Case(
        "mask_of_other_size",
        "a mask that does not match its image's size cannot give boxes",
        "ingest",
        mask_of_other_size,
        Refused(r"s0\.png.*mask is 16x16, image is 32x32", r"save the mask at the image's size"),
    ),
    Case(
        "image_folder_missing",
        "ingest.images naming a folder that does not exist",
        "ingest",
        then_params(folders, ingest={"images": "pictures"}),
        Refused(r"raw/pictures: image folder not found", r"set ingest\.root and ingest\.images"),
    ),
    # clean: unusual but decodable images are scored, not crashed on
    Case(
        "one_by_one_image",
        "a 1x1 image is decoded and scored by every check, and flagged odd-size",
        "clean",
        ingested(
            with_file("dot.png", lambda: encoded(Image.new("RGB", (1, 1), (90, 90, 90)), "PNG"))
        ),
        Recorded(
            ISSUES_OUT,
            "issues",
            IMAGES_IN + 1,
            "images/dot.png",
            {
                "is_unreadable_issue": False,
                "is_odd_size_issue": True,
                "action": "flag",
                "reason": re.compile(r"\bodd_size \(flag\)"),  # blur too: one pixel has no edges
            },
        ),
    ),
    Case(
        "sixteen_bit_tiff",
        "a 16-bit grey TIFF (in ingest.extensions) is decoded and scaled, not clipped to white",
        "clean",
        ingested(with_file("deep.tif", sixteen_bit("TIFF"))),
        Recorded(
            ISSUES_OUT,
            "issues",
            IMAGES_IN + 1,
            "images/deep.tif",
            {"mode": "I;16", "format": "TIFF", "is_light_issue": False, "action": "keep"},
        ),
    ),
    Case(
        "sixteen_bit_png",
        "a 16-bit grey PNG is decoded and scaled, not clipped to white",
        "clean",
        ingested(with_file("deep.png", sixteen_bit("PNG"))),
        Recorded(
            ISSUES_OUT,
            "issues",
            IMAGES_IN + 1,
            "images/deep.png",
            {"mode": "I;16", "format": "PNG", "is_light_issue": False, "action": "keep"},
        ),
    ),
    Case(
        "cmyk_jpeg",
        "a CMYK JPEG (print workflows) is decoded and scored like any colour image",
        "clean",
        ingested(with_file("print.jpg", cmyk_jpeg)),
        Recorded(
            ISSUES_OUT,
            "issues",
            IMAGES_IN + 1,
            "images/print.jpg",
            {"mode": "CMYK", "format": "JPEG", "is_unreadable_issue": False, "action": "keep"},
        ),
    ),
    # split: the classes that reach it, and the manifests it reads
    Case(
        "class_emptied_by_cleaning",
        "clean removed every scratch image: split names the class and where its images went",
        "split",
        emptied_class,
        Refused(
            r"class 'scratch' has no images left: the clean stage kept none of its 4 "
            r".*issues\.parquet",
            r"drop the class from ingest\.classes",
        ),
    ),
    Case(
        "class_with_one_image",
        "one scratch image cannot be on train, val and test",
        "split",
        one_scratch_image,
        Refused(r"class 'scratch' has 1 group\(s\)", r"split\.min_groups_policy: train_only"),
    ),
    Case(
        "all_images_in_one_class",
        "every image good (classes inferred): there is nothing to tell apart",
        "split",
        all_good,
        Refused(r"only one class \('good'\)", r"add images of (the )?defect"),
    ),
    Case(
        "split_fractions_not_summing_to_one",
        "split.train + val + test = 1.1 is refused before reading anything",
        "split",
        with_params(split={"train": 0.8}),
        Refused(r"split\.train \+ split\.val \+ split\.test must be 1 \(got 1\.1\)", r"must be 1"),
    ),
    Case(
        "truncated_manifest",
        "clean.parquet cut in half (a disk filled up) is refused, naming the file",
        "split",
        truncate_clean_manifest,
        Refused(r"clean\.parquet: not a readable parquet manifest", r"delete it and rerun"),
    ),
    Case(
        "garbled_manifest",
        "clean.parquet with its column data overwritten but its footer intact",
        "split",
        garble_clean_manifest,
        Refused(r"clean\.parquet: corrupted manifest", r"delete it and rerun"),
    ),
    Case(
        "manifest_schema_version_mismatch",
        "a clean.parquet written by an older pipeline version",
        "split",
        older_schema_version,
        Refused(
            r"clean\.parquet: schema version 1 but this code reads version \d+",
            r"rerun the stage that writes it",
        ),
    ),
    Case(
        "missing_manifest",
        "split run before clean wrote its manifest",
        "split",
        missing_clean_manifest,
        Refused(r"clean\.parquet: manifest not found", r"run the stage that writes it"),
    ),
    # train: params, and training itself
    Case(
        "params_typo",
        "train.lrr (a typo of train.lr) is refused, naming it and the key meant",
        "train",
        with_params(train={"lrr": 0.01}),  # as an editor or `dvc exp run -S +train.lrr=` puts it
        Refused(r"unknown key 'train\.lrr'", r"did you mean 'train\.lr'"),
    ),
    Case(
        "params_wrong_type",
        "train.epochs: ten is refused with the key and the allowed range",
        "train",
        with_params(train={"epochs": "ten"}),
        Refused(r"'train\.epochs' \(got 'ten'\)", r"allowed: 1 <= value <= 1000"),
    ),
    Case(
        "params_negative_lr",
        "train.lr: -0.001 is refused with the allowed range",
        "train",
        with_params(train={"lr": -0.001}),
        Refused(r"'train\.lr' \(got -0\.001\)", r"allowed: 0 < value <= 10"),
    ),
    Case(
        "focal_alpha_wrong_length",
        "one focal alpha for two classes is refused, listing the classes in order",
        "train",
        then_params(split_done, train={"loss": "focal", "focal_alpha": [0.5]}),
        Refused(r"train\.focal_alpha has 1 values but there are 2 classes", r"give one per class"),
    ),
    Case(
        "params_huge_lr",
        "train.lr: 1e6 is refused before training, with the allowed range",
        "train",
        with_params(train={"lr": 1e6}),
        Refused(r"'train\.lr' \(got 1000000\.0\)", r"allowed: 0 < value <= 10"),
    ),
    Case(
        "params_batch_of_one",
        "train.batch_size: 1 is refused (batch norm cannot train on one image at a time)",
        "train",
        with_params(train={"batch_size": 1}),
        Refused(r"'train\.batch_size' \(got 1\)", r"allowed: 2 <= value <= 4096"),
    ),
    Case(
        "training_diverges",
        "lr 10 with momentum 0.99 and no clipping blows the weights up: stop, say lower lr",
        "train",
        then_params(
            split_done,
            train={
                "optimizer": "sgd",
                "lr": 10.0,
                "momentum": 0.99,
                "weight_decay": 0.0,
                "grad_clip": 0.0,
                "schedule": "onecycle",
                "epochs": 3,
                "batch_size": 2,
            },
        ),
        Refused(
            r"(training|validation) loss became (nan|inf|-inf)", r"lower train\.lr \(now 10\.0\)"
        ),
    ),
    Case(
        "params_not_yaml",
        "a params.yaml with a YAML syntax error is refused, naming the file and the line",
        "ingest",
        params_not_yaml,
        Refused(
            r"params\.yaml: not valid YAML.*line \d+, column \d+",
            r"fix the syntax at the line and column shown",
        ),
    ),
    Case(
        "params_section_missing",
        "a params.yaml without the train section",
        "train",
        section_removed,
        Refused(
            r"params\.yaml: missing section 'train'", r"add it, e\.g\. from the repository's params"
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(
    case: Case, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = Project(tmp_path)
    case.build(project)
    caplog.clear()
    caplog.set_level(logging.WARNING)
    monkeypatch.chdir(project.work)
    code = importlib.import_module(f"stages.{case.stage}").main(project.argv(case.stage))
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    if isinstance(case.expect, Refused):
        assert code == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].startswith("error: "), errors
        assert re.search(case.expect.names, errors[0], re.S), errors[0]
        assert re.search(case.expect.todo, errors[0], re.S), errors[0]
        written = [
            out for out in project.outputs(case.stage) if out.is_file() or any(out.rglob("*"))
        ]
        assert not written, f"a refused stage wrote {written}"
        return
    expect = case.expect
    assert code == 0
    rows, _ = read_manifest(project.work / expect.manifest, expect.kind)
    assert len(rows) == expect.rows  # nothing dropped
    row = next(row for row in rows if row["path"] == expect.path)
    for name, wanted in expect.fields.items():
        if isinstance(wanted, re.Pattern):
            assert wanted.search(str(row[name])), (name, row[name])
        else:
            assert row[name] == wanted, (name, row[name])
    if expect.warning is not None:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(re.search(expect.warning, text) for text in warnings), warnings


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
def test_sixteen_bit_images_reach_training_scaled_not_clipped(tmp_path: Path, fmt: str) -> None:
    # What train, evaluate and predict decode: 16-bit values v become v / 257 (Pillow's own
    # conversion to RGB clips every value over 255, turning the image white).
    values = np.full((SIDE, SIDE), 257 * 100, dtype=np.uint16)
    values[: SIDE // 2] = 257 * 20
    path = tmp_path / f"deep.{fmt.lower()}"
    Image.fromarray(values).save(path, format=fmt)
    pixels = load_rgb(path, SIDE, SIDE * SIDE)
    assert pixels.shape == (SIDE, SIDE, 3)
    np.testing.assert_array_equal(pixels[: SIDE // 2], 20)
    np.testing.assert_array_equal(pixels[SIDE // 2 :], 100)


def test_a_lone_last_training_image_does_not_crash_batch_norm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 32 px ResNet-18's last feature map is 1x1: a last batch of one image gives batch norm
    # one value per channel, which it cannot train on. The stage must train, not crash.
    project = Project(tmp_path)
    split_done(project)
    rows, _ = read_manifest(tmp_path / "data/interim/split.parquet", "split")
    n_train = sum(row["split"] == "train" for row in rows)
    assert n_train >= 3  # else no batch size >= 2 leaves exactly one image over
    project.params(train={"batch_size": n_train - 1})
    monkeypatch.chdir(tmp_path)
    assert importlib.import_module("stages.train").main(project.argv("train")) == 0
    summary = json.loads((tmp_path / "reports/train/metrics.json").read_text(encoding="utf-8"))
    assert summary["train_images"] == n_train
    assert (tmp_path / "models/model.pt").is_file()
