"""Training throughput of the real loop against the bare model step, side by side in one run.

Usage: python bench/train_speed.py [--magnetic PATH] [--images 256] [--batch 32]
           [--models mobilenet_v2,resnet18] [--sizes 128,224]
           [--workers auto] [--repeats 3] [--data heavy|params] [--device cpu|cuda]
           [--augment-on auto|loader|device[,...]]

For each model and image size, on `--images` magnetic_tile images (a seeded sample) already in
the decoded cache (as from the second epoch on):
  loop   images/s of one epoch of pipeline.training's real loop: sampler, DataLoader,
         augmentation (per image in the DataLoader, or per batch on the device:
         --augment-on, train.augment_on), mixing, normalisation, loss, optimiser, grad
         clipping, schedule; after one warm-up epoch. --data heavy (default): weighted
         sampler, flips, rotation 10 deg, resized crop 0.8, colour jitter 0.2, defect-aware
         CutMix on half the batches; --data params: params.yaml's train section as it is.
  bare   images/s of the same model's forward + backward + AdamW step on in-memory tensors of
         the same batch size (after 3 warm-up steps), on the device, under the same autocast
         as the loop (train.amp: auto) on CUDA.
  ratio  loop / bare (goal >= 0.9).
  data   images/s of the loop's DataLoader alone (sampler, per-image augmentation if any,
         batching), best of --repeats epochs: what feeding the step costs (on a CPU the two
         share the cores; on a GPU the loop cannot go faster than this).
Loop and bare runs alternate --repeats times (the host is shared: a disturbance then hits both
sides alike); images/s are the best run of each, the ratio is the median of the pairs' ratios.
With several --augment-on places (e.g. loader,device) each gets a loop row, all measured
against the same bare runs in the same rounds.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scratch import MAGNETIC, run_ingest
from torch import nn

from pipeline.datasets import decode_images, output_names, scaled_boxes, targets
from pipeline.distributed import Process
from pipeline.manifest import TaskInfo, read_manifest
from pipeline.models import build_model, place_model
from pipeline.params import TrainParams
from pipeline.training import Job, Loop, Side, amp_dtype, train_epoch

REPO = Path(__file__).resolve().parents[1]
HEAVY = {  # the most expensive data path the params offer
    "sampler": "weighted",
    "rotate_degrees": 10.0,
    "crop_scale_min": 0.8,
    "color_jitter": 0.2,
    "mix": "defect_cutmix",
    "mix_prob": 0.5,
    "grad_clip": 5.0,
    "epochs": 2,
}
SETTINGS: dict[str, dict[str, Any]] = {
    "heavy": HEAVY,
    "params": {"epochs": 2},
}  # params: params.yaml's train section as is


def sample_rows(root: Path, work: Path, count: int) -> tuple[list[dict[str, Any]], TaskInfo]:
    """Ingest magnetic_tile and return a seeded sample of `count` readable rows and the info."""
    run_ingest(root, MAGNETIC, work / "ingest.parquet")
    rows, info = read_manifest(work / "ingest.parquet", "images")
    readable = [row for row in rows if not row["is_unreadable_issue"]]
    pick = np.random.default_rng(0).choice(len(readable), size=count, replace=False)
    return [readable[i] for i in sorted(pick)], info


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_runner(
    params: TrainParams, side: Side, info: TaskInfo, device: torch.device
) -> tuple[Callable[[], float], Callable[[], float]]:
    """After a warm-up epoch of the real loop, a call of the first times one more epoch of it,
    a call of the second one epoch of its DataLoader alone: images/s."""
    torch.manual_seed(0)
    model = build_model(params.model, len(output_names(info)), False, params.dropout)
    job = Job(info, device, Process(0, 1), None, "", lambda entry: None)
    loop = Loop(place_model(model, device), side, side, params, job)
    train_epoch(loop, 1)  # warm-up
    epochs = itertools.count(2)

    def timed() -> float:
        synchronize(device)
        started = time.perf_counter()
        train_epoch(loop, next(epochs))
        synchronize(device)
        return len(loop.sampler) / (time.perf_counter() - started)

    def data() -> float:
        started = time.perf_counter()
        count = sum(len(batch[0]) for batch in loop.loader(next(epochs)))
        return count / (time.perf_counter() - started)

    return timed, data


def bare_runner(
    params: TrainParams, n_outputs: int, steps: int, device: torch.device
) -> Callable[[], float]:
    """After 3 warm-up steps, a call times `steps` bare steps: images/s."""
    torch.manual_seed(0)
    model = build_model(params.model, n_outputs, False, params.dropout)
    model = place_model(model, device).train()
    generator = torch.Generator().manual_seed(0)
    size = params.image_size
    batch = torch.randn((params.batch_size, 3, size, size), generator=generator)
    batch = batch.to(device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, n_outputs, (params.batch_size,), generator=generator).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    amp = amp_dtype(device, "auto")

    def step() -> None:
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(model(batch).float(), labels)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()

    def timed() -> float:
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        return steps * params.batch_size / (time.perf_counter() - started)

    return timed


def compare(
    base: TrainParams,
    places: list[str],
    side: Side,
    info: TaskInfo,
    device: torch.device,
    repeats: int,
) -> None:
    """Print a row per train.augment_on place: its loop's images/s against the bare step's,
    measured in the same `repeats` interleaved rounds, and its DataLoader's alone."""
    runners = {
        place: loop_runner(
            TrainParams.model_validate({**base.model_dump(), "augment_on": place}),
            side,
            info,
            device,
        )
        for place in places
    }
    steps = len(side.images) // base.batch_size
    bare = bare_runner(base, len(output_names(info)), steps, device)
    # interleaved, so a disturbance of the shared host hits all sides alike
    rounds = [
        (bare(), {place: loop() for place, (loop, _) in runners.items()}) for _ in range(repeats)
    ]
    for place, (_, data) in runners.items():
        pairs = [(loops[place], bared) for bared, loops in rounds]
        ratio = float(np.median([a / b for a, b in pairs]))
        loop_best, bare_best = max(a for a, _ in pairs), max(b for _, b in pairs)
        feed = max(data() for _ in range(repeats))
        print(
            f"{base.model:13s} {base.image_size:4d}px  augment_on {place:6s}  "
            f"loop {loop_best:7.1f} images/s  bare {bare_best:7.1f} images/s  "
            f"ratio {ratio:.2f} (per pair: {', '.join(f'{a / b:.2f}' for a, b in pairs)})  "
            f"data {feed:7.1f} images/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--magnetic", type=Path, default=REPO.parent / "shared/datasets/magnetic_tile"
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--models", default="mobilenet_v2,resnet18")
    parser.add_argument("--sizes", default="128,224")
    parser.add_argument(
        "--workers",
        type=lambda value: value if value == "auto" else int(value),
        default="auto",
        help="train.num_workers: auto (CPU 0, GPU a core each up to 8) or a number",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved loop/bare pairs")
    parser.add_argument(
        "--data",
        choices=sorted(SETTINGS),
        default="heavy",
        help="heavy: the most expensive data path; params: params.yaml's augmentation/sampler",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--augment-on",
        default="auto",
        help="train.augment_on, or several side by side: auto | loader | device, e.g. "
        "loader,device",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    section = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    with tempfile.TemporaryDirectory() as tmp:
        rows, info = sample_rows(args.magnetic, Path(tmp), args.images)
        print(
            f"magnetic_tile sample: {len(rows)} images, batch {args.batch}, "
            f"workers {args.workers}, {args.repeats} interleaved pairs, {device.type}, "
            f"{args.data}: {SETTINGS[args.data]}"
        )
        for size in (int(s) for s in args.sizes.split(",")):
            images = decode_images(args.magnetic, rows, size, "memory", None)
            side = Side(images, targets(rows, info), scaled_boxes(rows, info, size))
            for name in args.models.split(","):
                changes = {
                    "model": name,
                    "image_size": size,
                    "batch_size": args.batch,
                    "num_workers": args.workers,
                }
                base = TrainParams.model_validate({**section, **SETTINGS[args.data], **changes})
                compare(base, args.augment_on.split(","), side, info, device, args.repeats)


if __name__ == "__main__":
    main()
