"""Train stage: fit a torchvision classifier on the train side, select the epoch on val, save it.

The checkpoint holds only tensors and plain values (loadable with weights_only=True): the state
dict, model name, image size, task, classes, and the train params that produced it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.datasets import decode_stack, output_names, targets
from pipeline.errors import ApexLoopError
from pipeline.manifest import TaskInfo, read_manifest
from pipeline.models import build_model, freeze_backbone, pick_device, place_model
from pipeline.params import TrainParams, load_section
from pipeline.paths import atomic_output, write_text_atomic
from pipeline.stagecli import run_stage
from pipeline.training import EpochLog, fit

log = logging.getLogger(__name__)


def side(
    rows: list[dict[str, Any]], name: str, info: TaskInfo, root: Path, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded images (N, 3, S, S) and targets of one side of the split."""
    members = [row for row in rows if row["split"] == name]
    if not members:
        raise ApexLoopError(f"the split has no '{name}' images; check the split fractions")
    return decode_stack(root, members, size), targets(members, info)


def save_checkpoint(path: Path, state: dict[str, Any], params: TrainParams, info: TaskInfo) -> None:
    """Write the checkpoint atomically."""
    checkpoint = {
        "state_dict": state,
        "model": params.model,
        "image_size": params.image_size,
        "task": info.task,
        "classes": list(info.classes),
        "good_class": info.good_class,
        "params": params.model_dump(),
    }
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)


def _history_csv(history: list[EpochLog]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(history[0])), lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(entry) for entry in history)
    return buffer.getvalue()


def run(
    params: TrainParams,
    root: Path,
    manifest: Path,
    model_out: Path,
    metrics: Path,
    history_out: Path,
) -> dict[str, Any]:
    """Train, then write the checkpoint, summary metrics and the per-epoch history."""
    started = time.perf_counter()
    rows, info = read_manifest(manifest, "split")
    device = pick_device(params.device)
    train = side(rows, "train", info, root, params.image_size)
    val = side(rows, "val", info, root, params.image_size)
    torch.manual_seed(params.seed)  # weight init and dropout draw from torch's global RNG
    model = build_model(params.model, len(output_names(info)), params.pretrained, params.dropout)
    frozen = freeze_backbone(model, params.freeze_fraction)
    model = place_model(model, device)
    state, history, best = fit(model, train, val, params, info, device)
    save_checkpoint(model_out, state, params, info)
    summary = {
        "best_epoch": best.epoch,
        "epochs_run": len(history),
        "monitor": params.monitor,
        "val_miss_rate": best.val_miss_rate,
        "val_macro_f1": best.val_macro_f1,
        "train_loss": best.train_loss,
        "val_loss": best.val_loss,
        "train_images": len(train[0]),
        "frozen_tensors": frozen,
        "device": device.type,
    }
    write_text_atomic(metrics, json.dumps(summary, indent=2) + "\n")
    write_text_atomic(history_out, _history_csv(history))
    log.info("trained in %.1f s: %s", time.perf_counter() - started, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--manifest", type=Path, required=True, help="split manifest")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint out")
    parser.add_argument("--metrics", type=Path, required=True, help="training summary (JSON)")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch curves (CSV)")
    args = parser.parse_args(argv)
    return run_stage(
        lambda: run(
            load_section(args.params, "train", TrainParams),
            args.root,
            args.manifest,
            args.model,
            args.metrics,
            args.history,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
