"""Compare training settings by K-fold cross-validation on magnetic_tile, pooled over folds.

Usage: TORCH_HOME=../shared/weights python bench/folds.py [--magnetic PATH] [--folds 5]
           [--only 0,1,...] [--work DIR] --arm NAME[:key=value,...] [--arm ...]

One test side split off once (split.seed), the rest in --folds tile-grouped folds; for each
fold, each arm trains on the other folds with params.yaml's train section changed by its
key=values (the README's recommended magnetic_tile settings unless an arm changes them), and
scores its fold with tta none. Arms run interleaved fold by fold, so a slow spell of the
shared host hits all alike. Printed per arm: per-fold macro-F1 and defect AUC, and over the
pooled validation scores of all folds macro-F1, miss and overkill at argmax, defect AUC, the
miss rate at the good-score threshold that calls 5% of the pooled good images defective, and
recall per class. One fold's runs differ by several points: compare arms by the pooled figures.
--work keeps each run's model and scores, so an interrupted comparison resumes where it was.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scratch import MAGNETIC, run_clean, run_ingest

from pipeline.checkpoints import load_model
from pipeline.evaluation import Scored, defect_auc
from pipeline.inference import predict_scores, score_metrics
from pipeline.manifest import TaskInfo, read_manifest
from pipeline.params import SplitParams, TrainParams
from stages import split as split_stage
from stages import train as train_stage

REPO = Path(__file__).resolve().parents[1]
RECOMMENDED: dict[str, Any] = {  # README's recommended magnetic_tile settings
    "model": "mobilenet_v2",
    "pretrained": True,
    "image_size": 224,
    "epochs": 12,
    "warmup_epochs": 1.0,
    "sampler": "weighted",
    "sampler_mode": "sqrt",
    "mix": "none",
    "defect_map_weight": 1.0,
}


def parse_arm(text: str) -> tuple[str, dict[str, Any]]:
    """NAME[:key=value,...] -> (name, train params changes): the key=values read as one YAML
    flow mapping, so a value may be a list or mapping, e.g.
    `pair:ensemble=2,member_overrides=[{},{defect_paste=0.3}]`."""
    name, _, changes = text.partition(":")
    mapping = re.sub(r"(^|[,{])\s*([\w.]+)=", r"\1\2: ", changes)
    return name, yaml.safe_load("{" + mapping + "}")


def section(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "params.yaml").read_text())[name])


def fold_manifests(root: Path, work: Path, folds: int) -> list[Path]:
    """Ingest and clean magnetic_tile with params.yaml's settings, then one split manifest per
    fold (that fold as val); made once in `work`."""
    manifests = [work / f"split-fold{k}.parquet" for k in range(folds)]
    if all(path.exists() for path in manifests):
        return manifests
    run_ingest(root, MAGNETIC, work / "ingest.parquet")
    run_clean(section("clean"), root, work)
    for k, path in enumerate(manifests):
        params = {**section("split"), "folds": folds, "train": 0.85, "val": 0.0, "fold": k}
        split_stage.run(
            SplitParams.model_validate(params),
            work / "clean.parquet",
            work / "issues.parquet",
            path,
            work / f"split-fold{k}.json",
        )
    return manifests


def run_fold(
    root: Path, manifest: Path, out: Path, changes: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, TaskInfo]:
    """Train on the fold's train side and score its val side: (scores, truth, info)."""
    params = TrainParams.model_validate({**section("train"), **RECOMMENDED, **changes})
    rows, info = read_manifest(manifest, "split")
    scored = out / "val.npz"
    if not scored.exists():
        started = time.perf_counter()
        train_stage.run(params, root, manifest, out / "model.pt", out / "live", out / "state")
        model, _, _ = load_model(out / "model.pt")
        val = train_stage.side(rows, "val", info, root, params, out / "state/decoded")
        setting = (64, torch.device("cpu"))
        scores = predict_scores(model, val.images, setting, info.task, "none")
        np.savez(scored, scores=scores, truth=val.targets.numpy())
        print(f"  {out.name}: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    saved = np.load(scored)
    return saved["scores"], saved["truth"], info


def figures(scores: np.ndarray, truth: np.ndarray, info: TaskInfo) -> dict[str, Any]:
    """Argmax metrics, defect AUC and the miss rate at 5% overkill of one set of scores."""
    metrics = score_metrics(scores, torch.as_tensor(truth), info, 0.5)
    side = Scored("val", [{}] * len(truth), scores, truth, info)
    good = side.good_scores[~side.is_defective]
    threshold = np.quantile(good, 0.05)  # 5% of the good images score below: called defective
    missed = float(np.mean(side.good_scores[side.is_defective] >= threshold))
    return {**metrics, "defect_auc": defect_auc(side), "miss_at_5": missed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--magnetic", type=Path, default=REPO.parent / "shared/datasets/magnetic_tile"
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", help="comma-separated folds to run (default: all)")
    parser.add_argument("--work", type=Path, help="keep runs here (default: a temp folder)")
    parser.add_argument("--arm", action="append", required=True, type=parse_arm)
    args = parser.parse_args()
    folds = [int(k) for k in args.only.split(",")] if args.only else range(args.folds)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        manifests = fold_manifests(args.magnetic, work, args.folds)
        results: dict[str, list[tuple[np.ndarray, np.ndarray, TaskInfo]]] = {}
        for k in folds:
            for name, changes in args.arm:
                out = work / f"{name}-fold{k}"
                results.setdefault(name, []).append(
                    run_fold(args.magnetic, manifests[k], out, changes)
                )
        for name, runs in results.items():
            per_fold = [figures(*run) for run in runs]
            pooled = figures(
                np.concatenate([s for s, _, _ in runs]),
                np.concatenate([t for _, t, _ in runs]),
                runs[0][2],
            )
            recall = {c: v["recall"] for c, v in pooled["per_class"].items()}
            images = sum(len(truth) for _, truth, _ in runs)
            print(
                f"{name}: folds {list(folds)}, per fold macro-F1 "
                f"{[round(f['macro_f1'], 2) for f in per_fold]}, defect AUC "
                f"{[f['defect_auc'] for f in per_fold]}\n"
                f"  pooled ({images} images): macro-F1 {pooled['macro_f1']:.3f}, "
                f"miss {pooled['miss_rate']:.3f}, "
                f"overkill {pooled['overkill_rate']:.3f}, defect AUC {pooled['defect_auc']}, "
                f"miss at 5% overkill {pooled['miss_at_5']:.3f}\n  recall {recall}"
            )


if __name__ == "__main__":
    main()
