"""Evaluating a trained model: scored sides, the operating point, metrics and plot data.

A side (train, val or test) is scored once; every figure comes from those scores. Decisions
come in two kinds: "as trained" (argmax, or multilabel scores >= evaluate.multilabel_threshold)
and at the operating point chosen on val (pipeline.operating), which is what predict applies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve
from torch import nn

from pipeline.datasets import decode_stack, output_names, targets
from pipeline.inference import predict_scores
from pipeline.manifest import TaskInfo
from pipeline.metrics import multiclass_metrics, multilabel_metrics, score_statistics
from pipeline.operating import (
    THRESHOLDS_VERSION,
    Thresholds,
    bootstrap_rates,
    decide_multiclass,
    good_threshold,
    multilabel_thresholds,
)
from pipeline.params import EvaluateParams, Tta

log = logging.getLogger(__name__)
CURVE_POINTS = 200  # PR/ROC points kept per class, so plot files stay small on large sets


@dataclass(frozen=True)
class Scored:
    """One side's rows with the model's scores (N, outputs) and the truth: class indices (N,)
    for multiclass, a multi-hot bool (N, defects) for multilabel."""

    name: str
    rows: list[dict[str, Any]]
    scores: np.ndarray
    truth: np.ndarray
    info: TaskInfo

    @property
    def is_defective(self) -> np.ndarray:
        if self.info.task == "multiclass":
            return np.asarray(self.truth != self.info.classes.index(self.info.good_class))
        return np.asarray(self.truth.any(axis=1))

    @property
    def good_scores(self) -> np.ndarray:
        """How good each image looks: the good-class score (multiclass); one minus the highest
        defect score (multilabel)."""
        if self.info.task == "multiclass":
            return self.scores[:, self.info.classes.index(self.info.good_class)]
        return 1.0 - self.scores.max(axis=1, initial=0.0)


def score_side(
    model: nn.Module,
    root: Path,
    rows: list[dict[str, Any]],
    info: TaskInfo,
    setting: tuple[int, int, torch.device, Tta],
) -> Scored:
    """Decode `rows` at the model's image size and score them; setting = (size, batch, device,
    test-time augmentation)."""
    size, batch_size, device, tta = setting
    if rows:
        images = decode_stack(root, rows, size)
        scores = predict_scores(model, images, (batch_size, device), info.task, tta)
    else:
        scores = np.zeros((0, len(output_names(info))))
    truth = targets(rows, info).numpy()
    name = rows[0]["split"] if rows else ""
    return Scored(name, rows, scores, truth if info.task == "multiclass" else truth > 0.5, info)


def choose_thresholds(val: Scored, params: EvaluateParams) -> Thresholds:
    """The operating point on val: the good-score threshold with the lowest overkill at miss
    <= max_miss_rate (multiclass), or one threshold per defect (multilabel)."""
    info, names = val.info, list(output_names(val.info))
    record: dict[str, Any] = {
        "version": THRESHOLDS_VERSION,
        "task": info.task,
        "classes": list(info.classes),
        "good_class": info.good_class,
        "outputs": names,
        "good_threshold": None,
        "per_class": {},
        "tta": params.tta,
        "val": {"images": len(val.rows)},
    }
    if info.task == "multilabel":
        choice = multilabel_thresholds(
            val.scores, val.truth, params.multilabel_rule, params.multilabel_min_recall
        )
        record["rule"] = params.multilabel_rule
        record["per_class"] = {n: float(t) for n, t in zip(names, choice.thresholds, strict=True)}
        record["val"]["fallback_classes"] = ",".join(names[i] for i in choice.fallback)
        return Thresholds.model_validate(record)
    threshold = good_threshold(val.good_scores, val.is_defective, params.max_miss_rate)
    record["val"]["max_miss_rate"] = params.max_miss_rate
    if threshold is None:
        record["rule"] = "argmax"
        record["val"]["reason"] = "val has no defective or no good images: argmax decisions"
        log.warning("operating point: %s", record["val"]["reason"])
    else:
        good = val.good_scores >= threshold
        record["rule"], record["good_threshold"] = "max_miss_rate", threshold
        record["val"]["miss_rate"] = round(float(good[val.is_defective].mean()), 4)
        record["val"]["overkill_rate"] = round(float((~good)[~val.is_defective].mean()), 4)
    return Thresholds.model_validate(record)


def predicted_hot(
    side: Scored, thresholds: Thresholds | None, params: EvaluateParams
) -> np.ndarray:
    """Bool (N, outputs): the decisions as trained (thresholds None) or at the operating point."""
    info = side.info
    if info.task == "multiclass":
        threshold = None if thresholds is None else thresholds.good_threshold
        chosen = decide_multiclass(side.scores, info.classes.index(info.good_class), threshold)
        return np.eye(len(info.classes), dtype=bool)[chosen]
    if thresholds is None:
        return np.asarray(side.scores >= params.multilabel_threshold)
    cut = np.array([thresholds.per_class[name] for name in output_names(info)])
    return np.asarray(side.scores >= cut)


def side_metrics(side: Scored, hot: np.ndarray, params: EvaluateParams) -> dict[str, Any]:
    """pipeline.metrics figures of one side's decisions (bool (N, outputs))."""
    info, names = side.info, output_names(side.info)
    if info.task == "multiclass":
        good = info.classes.index(info.good_class)
        return multiclass_metrics(
            side.truth, hot.argmax(axis=1), names, good, params.min_class_accuracy
        )
    return multilabel_metrics(side.truth, hot, names, params.min_class_accuracy)


def called_good(side: Scored, hot: np.ndarray) -> np.ndarray:
    if side.info.task == "multiclass":
        return np.asarray(hot[:, side.info.classes.index(side.info.good_class)])
    return np.asarray(~hot.any(axis=1))


def defect_auc(side: Scored) -> float | None:
    """ROC AUC of telling defective images from good ones by how defective they look (one
    minus the good score): free of any threshold, so variants compare before an operating point
    is chosen. None unless the side has both good and defective images."""
    defective = side.is_defective
    if defective.all() or not defective.any():
        return None
    return round(float(roc_auc_score(defective, 1.0 - side.good_scores)), 4)


def build_metrics(
    sides: dict[str, Scored], thresholds: Thresholds, params: EvaluateParams
) -> dict[str, Any]:
    """The metrics JSON: each side as trained, the train-val gap, and the operating point on
    val and test, test miss and overkill with bootstrap 95% intervals."""
    result: dict[str, Any] = {}
    for name, side in sides.items():
        hot = predicted_hot(side, None, params)
        result[name] = side_metrics(side, hot, params)
        if name != "train":
            result[name]["scores"] = score_statistics(side.scores, hot, output_names(side.info))
            result[name]["defect_auc"] = defect_auc(side)
    train, val = result["train"], result["val"]
    scored = train["images"] and val["images"]  # no gap to an empty side
    result["train_val_gap"] = {
        key: round(train[key] - val[key], 4)
        if scored and None not in (train[key], val[key])
        else None
        for key in ("accuracy", "macro_f1")
    }
    operating: dict[str, Any] = {
        "rule": thresholds.rule,
        "good_threshold": thresholds.good_threshold,
    }
    operating |= {f"threshold_{name}": t for name, t in thresholds.per_class.items()}
    for name in ("val", "test"):
        side = sides[name]
        hot = predicted_hot(side, thresholds, params)
        operating[name] = side_metrics(side, hot, params)
        if name == "test" and params.bootstrap_resamples:
            intervals = bootstrap_rates(
                side.is_defective, called_good(side, hot), params.bootstrap_resamples, params.seed
            )
            for rate in ("miss_rate", "overkill_rate"):
                operating[name][f"{rate}_low"] = intervals[rate]["low"]
                operating[name][f"{rate}_high"] = intervals[rate]["high"]
    result["operating"] = operating
    return result


def prediction_rows(
    side: Scored, thresholds: Thresholds, params: EvaluateParams
) -> list[dict[str, Any]]:
    """Rows of the predictions manifest: the image, its truth, every output's score, the
    decision as trained (`predicted`) and at the operating point (`decision`)."""
    as_trained = _readable(side, predicted_hot(side, None, params))
    decision = thresholds.decide(side.scores)
    return [
        {
            "path": row["path"],
            "split": row["split"],
            "label": row["label"],
            "labels": row["labels"],
            "scores": [float(s) for s in scores],
            "predicted": trained,
            "decision": decided,
        }
        for row, scores, trained, decided in zip(
            side.rows, side.scores, as_trained, decision, strict=True
        )
    ]


def _readable(side: Scored, hot: np.ndarray) -> list[str]:
    names = output_names(side.info)
    if side.info.task == "multiclass":
        return [names[i] for i in hot.argmax(axis=1)]
    return [
        "+".join(n for n, hit in zip(names, row, strict=True) if hit) or side.info.good_class
        for row in hot
    ]


def truth_names(side: Scored) -> list[str]:
    """The same readable form for the true labels (multilabel: good / defective)."""
    if side.info.task == "multiclass":
        return [side.info.classes[i] for i in side.truth]
    return ["defective" if hit else side.info.good_class for hit in side.is_defective]


def confusion_rows(side: Scored, decisions: list[str]) -> list[dict[str, Any]]:
    """Aggregated confusion matrix, one row per (actual, predicted) pair with its count (every
    pair, zeros included); multilabel is good against defective."""
    info = side.info
    names = list(info.classes) if info.task == "multiclass" else [info.good_class, "defective"]
    if info.task == "multilabel":
        decisions = [d if d == info.good_class else "defective" for d in decisions]
    counts = dict.fromkeys(((a, p) for a in names for p in names), 0)
    for pair in zip(truth_names(side), decisions, strict=True):
        counts[pair] += 1
    return [{"actual": a, "predicted": p, "count": n} for (a, p), n in counts.items()]


def class_curves(side: Scored) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """One-vs-rest PR (recall, precision) and ROC (fpr, tpr) curves per output class, thinned
    to CURVE_POINTS points; a class without both positives and negatives has none."""
    names = output_names(side.info)
    hot = (
        side.truth if side.info.task == "multilabel" else np.eye(len(names), dtype=bool)[side.truth]
    )
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"pr": {}, "roc": {}}
    for i, name in enumerate(names):
        positives = int(hot[:, i].sum())
        if positives == 0 or positives == len(hot):
            continue
        precision, recall, _ = precision_recall_curve(hot[:, i], side.scores[:, i])
        fpr, tpr, _ = roc_curve(hot[:, i], side.scores[:, i])
        curves["pr"][name] = _thin(recall, precision)
        curves["roc"][name] = _thin(fpr, tpr)
    return curves


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.unique(np.linspace(0, len(x) - 1, min(len(x), CURVE_POINTS)).round().astype(int))
    return x[keep], y[keep]
