"""Export a trained checkpoint for line-side runtimes: TorchScript, ONNX and an export.json.

Each model file is written to a temporary sibling, checked against the checkpoint's own model
on a seeded batch and only then renamed into place, so a killed or failed export never leaves a
half-written or wrong file under its final name. export.json is removed first and written last:
a folder without it is not a complete export.

ONNX goes through torch.onnx's torch.export-based ("dynamo") exporter, the default in torch
2.14, which needs onnx and onnxscript; onnxruntime runs the check. It exports all five
supported architectures with a dynamic batch axis (the legacy TorchScript-based exporter,
dynamo=False, also does, but is deprecated).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.checkpoints import load_model
from pipeline.datasets import output_names
from pipeline.errors import ApexLoopError
from pipeline.inference import normalise
from pipeline.manifest import TaskInfo
from pipeline.models import MEAN, STD
from pipeline.paths import atomic_output, write_text_atomic

log = logging.getLogger(__name__)

FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
FORMATS = tuple(FILES)
SIDECAR = "export.json"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# torch's ONNX function library is written for opset 18: asking for it needs no version
# conversion, and it is the oldest the exporter supports (older runtimes load older opsets).
ONNX_OPSET = 18
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# Trace/export with one batch size and check with another: the check then also proves that the
# batch axis is dynamic (a file specialised to the export batch fails it).
EXPORT_BATCH = 2
CHECK_BATCH = 3
CHECK_SEED = 0
# Parity: |exported - checkpoint| <= ATOL + RTOL * |checkpoint| for every logit. float32
# kernels that sum in another order differ by ~1e-6 on logits of size ~1 (measured up to 4e-6
# on all five architectures and the repo's trained resnet18); a real defect (wrong weights,
# batch-norm in train mode, other normalisation) moves logits by far more than 1e-4.
ATOL = 1e-4
RTOL = 1e-4


def export(checkpoint: Path, out_dir: Path, formats: Sequence[str]) -> dict[str, Any]:
    """Write the requested formats of `checkpoint`'s model and export.json under `out_dir`;
    every file is parity-checked before it is renamed into place. Returns the sidecar."""
    formats = _check_formats(formats)
    if not checkpoint.is_file():
        raise ApexLoopError(f"{checkpoint}: no such checkpoint; run the train stage first")
    model, size, info = load_model(checkpoint)
    (out_dir / SIDECAR).unlink(missing_ok=True)
    example = example_batch(size, EXPORT_BATCH, seed=CHECK_SEED + 1)
    inputs = example_batch(size, CHECK_BATCH, seed=CHECK_SEED)
    with torch.no_grad():
        expected = model(inputs).numpy()
    files: dict[str, dict[str, Any]] = {}
    for fmt in formats:
        path = out_dir / FILES[fmt]
        with atomic_output(path) as tmp:
            WRITERS[fmt](model, example, tmp)
            difference = check_parity(path, expected, RUNNERS[fmt](tmp, inputs))
            digest = _sha256(tmp)
        log.info("wrote %s (max |logit difference| %.2e)", path, difference)
        files[fmt] = {"path": FILES[fmt], "sha256": digest, "max_abs_diff": difference}
    for fmt in set(FORMATS) - set(formats):  # a stale file would not match this export.json
        (out_dir / FILES[fmt]).unlink(missing_ok=True)
    sidecar = describe(checkpoint, size, info, files)
    if "onnx" in files:  # the opset in the file, should the exporter have kept another
        sidecar["onnx_opset"] = onnx_opset(out_dir / FILES["onnx"])
    write_text_atomic(out_dir / SIDECAR, json.dumps(sidecar, indent=2) + "\n")
    log.info("wrote %s", out_dir / SIDECAR)
    return sidecar


def _check_formats(formats: Sequence[str]) -> list[str]:
    """Known formats, each once, in the order given; ONNX only with its packages installed."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ApexLoopError(f"export formats {unknown or '[]'}: choose from {list(FORMATS)}")
    if "onnx" in formats:
        missing = [name for name in ONNX_PACKAGES if not _importable(name)]
        if missing:
            raise ApexLoopError(
                f"ONNX export needs {', '.join(missing)}: install them with "
                'pip install -e ".[export]" (or drop onnx from --formats)'
            )
    return list(dict.fromkeys(formats))


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def example_batch(size: int, batch: int, seed: int) -> torch.Tensor:
    """A seeded batch of random uint8 images, normalised as predict does: float (B, 3, S, S)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8)
    return normalise(images, torch.device("cpu")).contiguous()  # plain NCHW, as runtimes feed


def check_parity(path: Path, expected: np.ndarray, actual: np.ndarray) -> float:
    """Max |actual - expected|; an ApexLoopError naming `path` when a logit is off by more
    than ATOL + RTOL * |expected| or the shapes differ."""
    if actual.shape != expected.shape:
        raise ApexLoopError(
            f"{path}: exported model gives logits of shape {actual.shape}, the checkpoint "
            f"{expected.shape}; not written"
        )
    difference = np.abs(actual.astype(np.float64) - expected)
    if not np.all(difference <= ATOL + RTOL * np.abs(expected)):
        raise ApexLoopError(
            f"{path}: exported model differs from the checkpoint by up to "
            f"{difference.max():.3g} in a logit (allowed {ATOL:g} + {RTOL:g} x |logit|); "
            "not written. Report this with the torch/onnx versions"
        )
    return float(difference.max())


def describe(
    checkpoint: Path, size: int, info: TaskInfo, files: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """export.json: what a line-side runtime needs to feed the model and read its outputs."""
    return {
        "checkpoint": {"path": str(checkpoint), "sha256": _sha256(checkpoint)},
        "task": info.task,
        "classes": list(info.classes),
        "good_class": info.good_class,
        "image_size": size,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "layout": "float32 NCHW, RGB, ImageNet-normalised",
            "preprocess": f"RGB image resized to {size}x{size} (bilinear, aspect not kept); "
            "x = (pixel / 255 - mean) / std per channel",
            "mean": list(MEAN),
            "std": list(STD),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(output_names(info))],
            "names": list(output_names(info)),
            "scores": "softmax over outputs" if info.task == "multiclass" else "sigmoid each",
        },
        "files": files,
        "parity": {"atol": ATOL, "rtol": RTOL, "check_batch": CHECK_BATCH},
        "torch_version": torch.__version__,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace (the supported models have no data-dependent control flow) and save."""
    with warnings.catch_warnings():
        # torch 2.14 marks torch.jit deprecated; TorchScript is still what C++ runtimes load.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))


def run_torchscript(path: Path, inputs: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return np.asarray(loaded(inputs).numpy())


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export with a dynamic batch axis, weights inside the one file (no .data sidecar)."""
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    if program is None:  # only the legacy exporter returns nothing
        raise ApexLoopError(f"{path}: torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


def onnx_opset(path: Path) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def run_onnx(path: Path, inputs: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(inputs.numpy())})
    return np.asarray(logits)


WRITERS: dict[str, Callable[[nn.Module, torch.Tensor, Path], None]] = {
    "torchscript": write_torchscript,
    "onnx": write_onnx,
}
RUNNERS: dict[str, Callable[[Path, torch.Tensor], np.ndarray]] = {
    "torchscript": run_torchscript,
    "onnx": run_onnx,
}
