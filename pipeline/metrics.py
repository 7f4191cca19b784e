"""Classification metrics an inspection team reads: per-class scores, miss and overkill rates.

miss rate = defective images called good / defective images;
overkill rate = good images called defective / good images.
Macro-F1 averages over the classes present in the true labels of the evaluated set.
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


def _summary(
    per_class: dict[str, Any],
    accuracy: float,
    miss: float | None,
    overkill: float | None,
    images: int,
) -> dict[str, Any]:
    present = [scores["f1"] for scores in per_class.values() if scores["support"] > 0]
    return {
        "images": images,
        "accuracy": round(accuracy, 4),
        "macro_f1": round(float(np.mean(present)), 4) if present else None,
        "miss_rate": miss,
        "overkill_rate": overkill,
        "per_class": per_class,
    }


def multiclass_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], good_index: int
) -> dict[str, Any]:
    """Metrics from integer class indices (N,) for true and predicted classes."""
    eye = np.eye(len(classes), dtype=bool)
    per_class = _per_class(eye[y_true], eye[y_pred], classes)
    true_defect, pred_defect = y_true != good_index, y_pred != good_index
    accuracy = float((y_true == y_pred).mean()) if len(y_true) else 0.0
    return _summary(
        per_class,
        accuracy,
        _rate(~pred_defect, true_defect),
        _rate(pred_defect, ~true_defect),
        len(y_true),
    )


def multilabel_metrics(
    true_hot: np.ndarray, pred_hot: np.ndarray, defects: Sequence[str]
) -> dict[str, Any]:
    """Metrics from boolean (N, defects) matrices; accuracy is exact-set accuracy."""
    per_class = _per_class(true_hot, pred_hot, defects)
    true_defect = np.asarray(true_hot.any(axis=1))
    pred_defect = np.asarray(pred_hot.any(axis=1))
    accuracy = float((true_hot == pred_hot).all(axis=1).mean()) if len(true_hot) else 0.0
    return _summary(
        per_class,
        accuracy,
        _rate(~pred_defect, true_defect),
        _rate(pred_defect, ~true_defect),
        len(true_hot),
    )
