"""Train stage: fit a torchvision classifier on the train side, select the epoch on val, save it.

Runs as one process, or as a DDP job under `torchrun --nproc_per_node=N -m stages.train ...`.
Outputs (rank 0): the best model's checkpoint; DVCLive curves per epoch and a summary (the
best epoch's figures) for `dvc plots` / `dvc exp show`; and, in the state folder, the
resumable state after the last finished epoch and the decoded-image cache (disk mode).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from dvclive import Live

from pipeline import distributed
from pipeline.checkpoints import code_files, fingerprint, load_model, save_model
from pipeline.datasets import decode_images, output_names, scaled_boxes, targets
from pipeline.errors import ApexLoopError
from pipeline.inference import predict_scores, score_metrics
from pipeline.manifest import TaskInfo, read_manifest
from pipeline.models import (
    build_model,
    freeze_backbone,
    freeze_modules,
    pick_device,
    place_model,
)
from pipeline.params import TrainParams, load_section
from pipeline.plots import training_curves_png
from pipeline.stagecli import run_stage
from pipeline.training import EpochLog, FitResult, Job, Side, fit

log = logging.getLogger(__name__)


def side(
    rows: list[dict[str, Any]],
    name: str,
    info: TaskInfo,
    root: Path,
    params: TrainParams,
    cache: Path,
) -> Side:
    """One side of the split decoded at params.image_size (from the cache folder when
    params.decode_cache is disk), with its targets and boxes."""
    members = [row for row in rows if row["split"] == name]
    if not members:
        raise ApexLoopError(f"the split has no '{name}' images; check the split fractions")
    size = params.image_size
    images = decode_images(root, members, size, params.decode_cache, cache)
    return Side(images, targets(members, info), scaled_boxes(members, info, size))


def _metric_name(field: str) -> str:
    """EpochLog field -> DVCLive metric: train_loss -> train/loss, gap -> train_val_gap."""
    if field == "gap":
        return "train_val_gap"
    return field.replace("_", "/", 1) if field.startswith(("train_", "val_")) else field


def _step(member: int, epoch: int, params: TrainParams) -> int:
    """The curves' x of a member's epoch: the members' epochs one after another."""
    return member * params.epochs + epoch


def _reporter(live: Live | None, params: TrainParams, member: int) -> Callable[[EpochLog], None]:
    """Per epoch: one log line, and the curves into DVCLive; only rank 0 has a Live (other
    ranks' train figures cover their own shard only, so they stay silent)."""
    prefix = f"member {member + 1}/{params.ensemble} " if params.ensemble > 1 else ""

    def report(entry: EpochLog) -> None:
        if live is None:
            return
        log.info(
            "%sepoch %d/%d lr %.2e | train loss %.4f acc %.3f | val loss %.4f acc %.3f "
            "macro-F1 %.3f miss %s overkill %s | gap %.3f",
            prefix,
            entry.epoch,
            params.epochs,
            entry.lr,
            entry.train_loss,
            entry.train_accuracy,
            entry.val_loss,
            entry.val_accuracy,
            entry.val_macro_f1,
            entry.val_miss_rate,
            entry.val_overkill_rate,
            entry.gap,
        )
        live.step = _step(member, entry.epoch, params)
        for field, value in asdict(entry).items():
            if field != "epoch" and value is not None:
                live.log_metric(_metric_name(field), value)
        live.make_summary()

    return report


def _summary(result: FitResult, params: TrainParams, extra: dict[str, Any]) -> dict[str, Any]:
    best = asdict(result.best)
    return {
        "best_epoch": result.best.epoch,
        "epochs_run": len(result.history),
        "monitor": params.monitor,
        "train": {k.removeprefix("train_"): v for k, v in best.items() if k.startswith("train_")},
        "val": {k.removeprefix("val_"): v for k, v in best.items() if k.startswith("val_")},
        "train_val_gap": result.best.gap,
        **extra,
    }


def _ensemble_summary(
    results: list[FitResult],
    frozen: list[int],
    val: dict[str, Any],
    params: TrainParams,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The saved ensemble's val figures, and each member's best epoch, val macro-F1 and
    frozen tensors (by member number from 1: `dvc exp show` makes a column of each)."""
    return {
        "members": len(results),
        "monitor": params.monitor,
        "val": {key: val[key] for key in ("accuracy", "macro_f1", "miss_rate", "overkill_rate")},
        "member": {
            str(k + 1): {
                "best_epoch": result.best.epoch,
                "epochs_run": len(result.history),
                "val_macro_f1": result.best.val_macro_f1,
                "frozen_tensors": frozen[k],
            }
            for k, result in enumerate(results)
        },
        **extra,
    }


def run(
    params: TrainParams, root: Path, manifest: Path, model_out: Path, live_dir: Path, state: Path
) -> dict[str, Any]:
    """Train (resuming from `state` when it holds this run's last epoch), then write the
    checkpoint and the DVCLive summary of the best epoch; returns that summary."""
    started = time.perf_counter()
    rows, info = read_manifest(manifest, "split")
    device = pick_device(params.device)
    process = distributed.start(device)
    try:
        train = side(rows, "train", info, root, params, state / "decoded")
        val = side(rows, "val", info, root, params, state / "decoded")
        live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=False) if process.is_main else None
        code = [*code_files(), Path(__file__)]
        results: list[FitResult] = []
        frozen: list[int] = []  # per member: members may freeze differently
        for k in range(params.ensemble):  # member 0 is the single model
            member = params.member(k)
            torch.manual_seed(member.seed)  # weight init and dropout draw from the global RNG
            model = build_model(
                member.model,
                len(output_names(info)),
                member.pretrained,
                member.dropout,
                member.pool,
            )
            frozen.append(
                freeze_backbone(model, member.freeze_fraction)
                + freeze_modules(model, member.freeze_stages)
            )
            job = Job(
                info,
                device,
                process,
                state / ("last.pt" if k == 0 else f"last-member{k}.pt"),
                fingerprint(manifest, member, process.world_size, code),
                _reporter(live, params, k),
            )
            results.append(fit(place_model(model, device), train, val, member, job))
        extra = {
            "train_images": len(train.images),
            "device": device.type,
            "processes": process.world_size,
        }
        summary = _summary(results[0], params, {**extra, "frozen_tensors": frozen[0]})
        if live is not None:
            save_model(model_out, [result.state for result in results], params, info)
            if len(results) > 1:
                ensemble = place_model(load_model(model_out)[0], device)
                setting = (params.batch_size, device)
                scores = predict_scores(ensemble, val.images, setting, info.task, "none")
                figures = score_metrics(scores, val.targets, info, 0.5)
                summary = _ensemble_summary(results, frozen, figures, params, extra)
            history = [
                {**asdict(entry), "epoch": _step(k, entry.epoch, params)}
                for k, result in enumerate(results)
                for entry in result.history
            ]
            training_curves_png(history, live_dir / "curves.png")
            live.summary = dict(summary)  # make_summary adds "step" to it
            live.end()
    finally:
        distributed.stop(process)
    log.info("trained in %.1f s: %s", time.perf_counter() - started, summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--manifest", type=Path, required=True, help="split manifest")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint out")
    parser.add_argument(
        "--live", type=Path, required=True, help="DVCLive folder: per-epoch curves and summary"
    )
    parser.add_argument(
        "--state",
        type=Path,
        required=True,
        help="folder kept between runs: resumable state (last.pt) and decoded-image cache",
    )
    return parser


def call(args: argparse.Namespace) -> dict[str, Any]:
    """Load this stage's params section and run it on the paths in `args`."""
    return run(
        load_section(args.params, "train", TrainParams),
        args.root,
        args.manifest,
        args.model,
        args.live,
        args.state,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_stage(lambda: call(args))


if __name__ == "__main__":
    raise SystemExit(main())
