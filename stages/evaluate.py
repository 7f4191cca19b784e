"""Evaluate stage: score the saved model on train, val and test; choose the operating point on
val and apply it to test; write metrics, predictions, thresholds, plot data and figures.

Multiclass "as trained" decisions are the argmax class; multilabel ones are the defects whose
score reaches evaluate.multilabel_threshold. The operating point (pipeline.operating) is what
`apexloop predict` applies. Miss rate counts defective images called good; overkill counts good
images called defective.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checkpoints import load_model
from pipeline.evaluation import (
    Scored,
    build_metrics,
    choose_thresholds,
    class_curves,
    confusion_rows,
    prediction_rows,
    score_side,
)
from pipeline.manifest import read_manifest, write_manifest
from pipeline.models import pick_device, place_model
from pipeline.operating import Thresholds, tradeoff_curve
from pipeline.params import EvaluateParams, load_section
from pipeline.paths import write_text_atomic
from pipeline.plots import confusion_matrix_png, curves_png, tradeoff_png
from pipeline.stagecli import run_stage

log = logging.getLogger(__name__)
SIDES = ("train", "val", "test")


def _json(rows: Sequence[dict[str, Any]]) -> str:
    """Plot data as a JSON list of records (numbers stay numbers for the Vega templates)."""
    return json.dumps(list(rows), indent=0) + "\n"


def write_plots(
    sides: dict[str, Scored], thresholds: Thresholds, plots: Path, figures: Path
) -> None:
    """Plot data for `dvc plots` (JSON) and the same plots as PNG for people: test confusion at
    the operating point, test PR and ROC per class, the val miss-vs-overkill trade-off."""
    val, test = sides["val"], sides["test"]
    confusion = confusion_rows(test, thresholds.decide(test.scores))
    write_text_atomic(plots / "confusion.json", _json(confusion))
    names = list(dict.fromkeys(row["actual"] for row in confusion))
    matrix = [[row["count"] for row in confusion if row["actual"] == a] for a in names]
    confusion_matrix_png(np.array(matrix), names, figures / "confusion.png", "test, operating")
    curves = class_curves(test)
    for kind, (x, y) in {"pr": ("recall", "precision"), "roc": ("fpr", "tpr")}.items():
        rows = [
            {"class": name, "point": i, x: round(float(a), 5), y: round(float(b), 5)}
            for name, (xs, ys) in curves[kind].items()
            for i, (a, b) in enumerate(zip(xs, ys, strict=True))
        ]
        write_text_atomic(plots / f"{kind}.json", _json(rows))
        curves_png(curves[kind], figures / f"{kind}.png", f"test {kind.upper()} per class", (x, y))
    trade = tradeoff_curve(val.good_scores, val.is_defective)
    write_text_atomic(plots / "tradeoff.json", _json(trade))
    chosen = None
    if thresholds.rule == "max_miss_rate":
        chosen = (
            float(str(thresholds.val["overkill_rate"])),
            float(str(thresholds.val["miss_rate"])),
        )
    overkill = np.array([point["overkill_rate"] for point in trade])
    tradeoff_png(
        overkill,
        np.array([point["miss_rate"] for point in trade]),
        chosen,
        figures / "tradeoff.png",
    )


def run(
    params: EvaluateParams, root: Path, manifest: Path, model_path: Path, out: dict[str, Path]
) -> dict[str, Any]:
    """Score every side, choose the operating point on val, write every output in `out`
    (metrics, predictions, thresholds, plots, figures); returns the metrics."""
    rows, info = read_manifest(manifest, "split")
    model, size, _ = load_model(model_path, info)
    device = pick_device("auto")
    place_model(model, device)
    sides = {
        name: score_side(
            model,
            root,
            [r for r in rows if r["split"] == name],
            info,
            (size, params.batch_size, device, params.tta),
        )
        for name in SIDES
    }
    thresholds = choose_thresholds(sides["val"], params)
    metrics = build_metrics(sides, thresholds, params)
    predictions = [
        row for name in ("val", "test") for row in prediction_rows(sides[name], thresholds, params)
    ]
    write_manifest(out["predictions"], predictions, "predictions", info)
    write_plots(sides, thresholds, out["plots"], out["figures"])
    thresholds.save(out["thresholds"])
    write_text_atomic(out["metrics"], json.dumps(metrics, indent=2) + "\n")
    test = metrics["operating"]["test"]
    log.info(
        "test at the operating point (%s %s): miss %s [%s, %s] overkill %s [%s, %s] macro-F1 %s",
        thresholds.rule,
        thresholds.good_threshold,
        test["miss_rate"],
        test.get("miss_rate_low"),
        test.get("miss_rate_high"),
        test["overkill_rate"],
        test.get("overkill_rate_low"),
        test.get("overkill_rate_high"),
        test["macro_f1"],
    )
    return metrics


OUTPUTS = {
    "metrics": "metrics JSON out",
    "predictions": "val + test predictions manifest (parquet) out",
    "thresholds": "operating-point thresholds JSON out (apexloop predict reads it)",
    "plots": "folder out: plot data CSVs for dvc plots",
    "figures": "folder out: the same plots as PNG",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--manifest", type=Path, required=True, help="split manifest")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint")
    for name, help_text in OUTPUTS.items():
        parser.add_argument(f"--{name}", type=Path, required=True, help=help_text)
    return parser


def call(args: argparse.Namespace) -> dict[str, Any]:
    """Load this stage's params section and run it on the paths in `args`."""
    return run(
        load_section(args.params, "evaluate", EvaluateParams),
        args.root,
        args.manifest,
        args.model,
        {name: getattr(args, name) for name in OUTPUTS},
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_stage(lambda: call(args))


if __name__ == "__main__":
    raise SystemExit(main())
