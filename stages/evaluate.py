"""Evaluate stage: score the saved model on val and test; metrics JSON, predictions, confusion plot.

Multiclass decisions are the argmax class; multilabel decisions are the defects whose score
reaches evaluate.multilabel_threshold. Miss rate counts defective images called good; overkill
counts good images called defective.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checkpoints import load_model
from pipeline.datasets import decode_stack, output_names, targets
from pipeline.inference import predict_logits, score_metrics, to_scores
from pipeline.manifest import TaskInfo, read_manifest
from pipeline.models import pick_device, place_model
from pipeline.params import EvaluateParams, load_section
from pipeline.paths import write_text_atomic
from pipeline.plots import confusion_matrix_png
from pipeline.stagecli import run_stage

log = logging.getLogger(__name__)
SIDES = ("val", "test")


def decisions(scores: np.ndarray, info: TaskInfo, threshold: float) -> list[str]:
    """One readable decision per image: the class, or the defects joined by '+' (or good)."""
    names = output_names(info)
    if info.task == "multiclass":
        return [names[i] for i in scores.argmax(axis=1)]
    return [
        "+".join(n for n, hit in zip(names, row >= threshold, strict=True) if hit)
        or info.good_class
        for row in scores
    ]


def truths(rows: list[dict[str, Any]], info: TaskInfo) -> list[str]:
    """The same readable form for the true labels."""
    if info.task == "multiclass":
        return [row["label"] for row in rows]
    return ["+".join(row["labels"]) or info.good_class for row in rows]


def confusion(
    actual: list[str], predicted: list[str], info: TaskInfo
) -> tuple[np.ndarray, list[str]]:
    """Count matrix over classes (multiclass) or good/defective (multilabel)."""
    if info.task == "multiclass":
        names = list(info.classes)
    else:
        names = [info.good_class, "defective"]
        actual = [a if a == info.good_class else "defective" for a in actual]
        predicted = [p if p == info.good_class else "defective" for p in predicted]
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    for a, p in zip(actual, predicted, strict=True):
        matrix[names.index(a), names.index(p)] += 1
    return matrix, names


def _predictions_csv(rows: list[dict[str, Any]], actual: list[str], predicted: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "actual", "predicted"])
    writer.writerows(zip([row["path"] for row in rows], actual, predicted, strict=True))
    return buffer.getvalue()


def run(
    params: EvaluateParams,
    root: Path,
    manifest: Path,
    model_path: Path,
    metrics: Path,
    predictions: Path,
    confusion_png: Path,
) -> dict[str, Any]:
    """Score val and test; write metrics, test predictions and the test confusion matrix."""
    rows, info = read_manifest(manifest, "split")
    model, size, _ = load_model(model_path, info)
    device = pick_device("auto")
    place_model(model, device)
    results: dict[str, Any] = {}
    for name in SIDES:
        members = [row for row in rows if row["split"] == name]
        logits = predict_logits(model, decode_stack(root, members, size), params.batch_size, device)
        scores = to_scores(logits, info.task)
        results[name] = score_metrics(
            scores, targets(members, info), info, params.multilabel_threshold
        )
        if name == "test":
            actual, predicted = (
                truths(members, info),
                decisions(scores, info, params.multilabel_threshold),
            )
    write_text_atomic(metrics, json.dumps(results, indent=2) + "\n")
    write_text_atomic(
        predictions,
        _predictions_csv([row for row in rows if row["split"] == "test"], actual, predicted),
    )
    matrix, names = confusion(actual, predicted, info)
    confusion_matrix_png(matrix, names, confusion_png, "test confusion matrix")
    test = results["test"]
    log.info(
        "test accuracy %.4f macro_f1 %s miss %s overkill %s",
        test["accuracy"],
        test["macro_f1"],
        test["miss_rate"],
        test["overkill_rate"],
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--manifest", type=Path, required=True, help="split manifest")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON out")
    parser.add_argument("--predictions", type=Path, required=True, help="test predictions CSV")
    parser.add_argument("--confusion", type=Path, required=True, help="confusion matrix PNG")
    args = parser.parse_args(argv)
    return run_stage(
        lambda: run(
            load_section(args.params, "evaluate", EvaluateParams),
            args.root,
            args.manifest,
            args.model,
            args.metrics,
            args.predictions,
            args.confusion,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
