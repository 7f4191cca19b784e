"""Training throughput of the real loop against the bare model step, side by side in one run.

Usage: python bench/train_speed.py [--magnetic PATH] [--images 256] [--batch 32]
           [--models mobilenet_v2,resnet18] [--sizes 128,224]
           [--workers 0] [--repeats 2]

For each model and image size, on `--images` magnetic_tile images (a seeded sample) already in
the decoded cache (as from the second epoch on):
  loop   images/s of one epoch of pipeline.training's real loop: weighted sampler, DataLoader,
         per-image augmentation (flips, rotation 10 deg, resized crop 0.8, colour jitter),
         defect-aware CutMix on half the batches, normalisation, loss, AdamW, grad clipping,
         schedule; after one warm-up epoch.
  bare   images/s of the same model's forward + backward + AdamW step on in-memory tensors of
         the same batch size (after 3 warm-up steps).
  ratio  loop / bare (goal >= 0.9).
Each figure is the best of --repeats timed runs (the host is shared; best-of is the least
disturbed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
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
from pipeline.training import Job, Loop, Side, train_epoch

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
CPU = torch.device("cpu")


def sample_rows(root: Path, work: Path, count: int) -> tuple[list[dict[str, Any]], TaskInfo]:
    """Ingest magnetic_tile and return a seeded sample of `count` readable rows and the info."""
    run_ingest(root, MAGNETIC, work / "ingest.parquet")
    rows, info = read_manifest(work / "ingest.parquet", "images")
    readable = [row for row in rows if not row["is_unreadable_issue"]]
    pick = np.random.default_rng(0).choice(len(readable), size=count, replace=False)
    return [readable[i] for i in sorted(pick)], info


def loop_rates(params: TrainParams, side: Side, info: TaskInfo, repeats: int) -> list[float]:
    """images/s of `repeats` epochs of the real loop, after a warm-up epoch."""
    torch.manual_seed(0)
    model = build_model(params.model, len(output_names(info)), False, params.dropout)
    job = Job(info, CPU, Process(0, 1), None, "", lambda entry: None)
    loop = Loop(place_model(model, CPU), side, side, params, job)
    train_epoch(loop, 1)  # warm-up
    rates = []
    for epoch in range(2, 2 + repeats):
        started = time.perf_counter()
        train_epoch(loop, epoch)
        rates.append(len(loop.sampler) / (time.perf_counter() - started))
    return rates


def bare_rates(params: TrainParams, n_outputs: int, steps: int, repeats: int) -> list[float]:
    """images/s of `repeats` runs of `steps` bare steps, after 3 warm-up steps."""
    torch.manual_seed(0)
    model = place_model(build_model(params.model, n_outputs, False, params.dropout), CPU).train()
    generator = torch.Generator().manual_seed(0)
    size = params.image_size
    batch = torch.randn((params.batch_size, 3, size, size), generator=generator)
    batch = batch.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, n_outputs, (params.batch_size,), generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(batch), labels).backward()
        optimizer.step()

    for _ in range(3):
        step()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * params.batch_size / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--magnetic", type=Path, default=REPO.parent / "shared/datasets/magnetic_tile"
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--models", default="mobilenet_v2,resnet18")
    parser.add_argument("--sizes", default="128,224")
    parser.add_argument("--workers", type=int, default=0, help="train.num_workers")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs; the best counts")
    args = parser.parse_args()
    section = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    with tempfile.TemporaryDirectory() as tmp:
        rows, info = sample_rows(args.magnetic, Path(tmp), args.images)
        print(
            f"magnetic_tile sample: {len(rows)} images, batch {args.batch}, "
            f"workers {args.workers}, best of {args.repeats}, {HEAVY}"
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
                params = TrainParams.model_validate({**section, **HEAVY, **changes})
                loop = max(loop_rates(params, side, info, args.repeats))
                steps = len(rows) // args.batch
                bare = max(bare_rates(params, len(output_names(info)), steps, args.repeats))
                print(
                    f"{name:13s} {size:4d}px  loop {loop:7.1f} images/s  "
                    f"bare {bare:7.1f} images/s  ratio {loop / bare:.2f}"
                )


if __name__ == "__main__":
    main()
