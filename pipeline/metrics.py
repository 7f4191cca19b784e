"""Classification metrics an inspection team reads: per-class scores, miss and overkill rates.

miss rate = defective images called good / defective images;
overkill rate = good images called defective / good images;
defect confusion rate = defective images called defective but the wrong defect(s) / defective
images (the part is rejected, but the defect report is wrong).
Macro-F1, balanced accuracy (mean recall) and the low-accuracy list cover the classes present
in the true labels of the evaluated set; a class's accuracy is the share of its images
classified correctly, i.e. its recall. Weighted F1 weighs each class by its support.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support


def _rate(hits: np.ndarray, among: np.ndarray) -> float | None:
    total = int(among.sum())
    return round(float((hits & among).sum()) / total, 4) if total else None


def _per_class(true_hot: np.ndarray, pred_hot: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    if len(true_hot) == 0:
        # An empty side (split.val: 0) has nothing to score; sklearn rejects empty input.
        empty = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {name: dict(empty) for name in names}
    precision, recall, f1, support = precision_recall_fscore_support(
        true_hot, pred_hot, average=None, zero_division=0
    )
    return {
        name: {
            "precision": round(float(p), 4),
            "recall": round(float(r), 4),
            "f1": round(float(f), 4),
            "support": int(s),
        }
        for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
    }


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _summary(
    per_class: dict[str, Any],
    accuracy: float,
    rates: tuple[float | None, float | None, float | None],
    images: int,
    min_class_accuracy: float,
) -> dict[str, Any]:
    present = {name: scores for name, scores in per_class.items() if scores["support"] > 0}
    support = sum(scores["support"] for scores in present.values())
    weighted = sum(scores["f1"] * scores["support"] for scores in present.values())
    low = [name for name, scores in present.items() if scores["recall"] < min_class_accuracy]
    miss, overkill, confusion = rates
    return {
        "images": images,
        "accuracy": round(accuracy, 4),
        "balanced_accuracy": _mean([scores["recall"] for scores in present.values()]),
        "macro_f1": _mean([scores["f1"] for scores in present.values()]),
        "weighted_f1": round(weighted / support, 4) if support else None,
        "miss_rate": miss,
        "overkill_rate": overkill,
        "defect_confusion_rate": confusion,
        # a string, not a list, so `dvc metrics show/diff` prints it
        "low_accuracy_classes": ",".join(low),
        "per_class": per_class,
    }


def multiclass_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    good_index: int,
    min_class_accuracy: float = 0.6,
) -> dict[str, Any]:
    """Metrics from integer class indices (N,) for true and predicted classes."""
    eye = np.eye(len(classes), dtype=bool)
    per_class = _per_class(eye[y_true], eye[y_pred], classes)
    true_defect, pred_defect = y_true != good_index, y_pred != good_index
    accuracy = float((y_true == y_pred).mean()) if len(y_true) else 0.0
    rates = (
        _rate(~pred_defect, true_defect),
        _rate(pred_defect, ~true_defect),
        _rate(pred_defect & (y_pred != y_true), true_defect),
    )
    return _summary(per_class, accuracy, rates, len(y_true), min_class_accuracy)


def multilabel_metrics(
    true_hot: np.ndarray,
    pred_hot: np.ndarray,
    defects: Sequence[str],
    min_class_accuracy: float = 0.6,
) -> dict[str, Any]:
    """Metrics from boolean (N, defects) matrices; accuracy is exact-set accuracy."""
    per_class = _per_class(true_hot, pred_hot, defects)
    true_defect = np.asarray(true_hot.any(axis=1))
    pred_defect = np.asarray(pred_hot.any(axis=1))
    exact = np.asarray((true_hot == pred_hot).all(axis=1))
    accuracy = float(exact.mean()) if len(true_hot) else 0.0
    rates = (
        _rate(~pred_defect, true_defect),
        _rate(pred_defect, ~true_defect),
        _rate(pred_defect & ~exact, true_defect),
    )
    return _summary(per_class, accuracy, rates, len(true_hot), min_class_accuracy)


def score_statistics(
    scores: np.ndarray, predicted_hot: np.ndarray, names: Sequence[str]
) -> dict[str, Any]:
    """Per output class: mean/min/max of its score and how often it was predicted, plus the
    classes never predicted (a class the model has given up on shows here first)."""
    per_class = {
        name: {
            "score_mean": round(float(scores[:, i].mean()), 4) if len(scores) else None,
            "score_min": round(float(scores[:, i].min()), 4) if len(scores) else None,
            "score_max": round(float(scores[:, i].max()), 4) if len(scores) else None,
            "predicted": int(predicted_hot[:, i].sum()),
        }
        for i, name in enumerate(names)
    }
    never = [name for name, stats in per_class.items() if stats["predicted"] == 0]
    return {"per_class": per_class, "never_predicted": ",".join(never)}
