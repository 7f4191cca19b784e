"""pipeline.evaluation on constructed score sets whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation import (
    Scored,
    build_metrics,
    choose_thresholds,
    confusion_rows,
    prediction_rows,
)
from pipeline.manifest import TaskInfo
from pipeline.params import EvaluateParams

MULTICLASS = TaskInfo("multiclass", ("good", "scratch", "hole"), "good")
MULTILABEL = TaskInfo("multilabel", ("good", "scratch", "hole"), "good")


def _params(**changes: object) -> EvaluateParams:
    settings = {
        "batch_size": 8,
        "multilabel_threshold": 0.5,
        "max_miss_rate": 0.0,
        "multilabel_rule": "f1",
        "multilabel_min_recall": 0.9,
        "bootstrap_resamples": 200,
        "min_class_accuracy": 0.6,
        "seed": 0,
        "tta": "none",
    }
    return EvaluateParams.model_validate(settings | changes)


def _side(name: str, info: TaskInfo, scores: list[list[float]], truth: list) -> Scored:
    labels = [info.classes[t] if info.task == "multiclass" else None for t in truth]
    rows = [
        {"path": f"{name}/{i}.png", "split": name, "label": label, "labels": []}
        for i, label in enumerate(labels)
    ]
    hot = np.array(truth) if info.task == "multiclass" else np.array(truth, dtype=bool)
    return Scored(name, rows, np.array(scores), hot, info)


# val: two good images (good scores 0.9, 0.6) and two defective ones (good scores 0.5, 0.2).
VAL = _side(
    "val",
    MULTICLASS,
    [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1]],
    [0, 0, 2, 1],
)
# test: the good image at 0.48 is called good by argmax but rejected at the threshold (> 0.5).
TEST = _side(
    "test",
    MULTICLASS,
    [[0.48, 0.27, 0.25], [0.45, 0.5, 0.05], [0.7, 0.2, 0.1]],
    [0, 1, 2],
)


def test_multiclass_operating_point_is_chosen_on_val_and_applied_to_test() -> None:
    thresholds = choose_thresholds(VAL, _params())
    # no miss allowed: the threshold must sit just above the highest defective good score (0.5)
    assert thresholds.rule == "max_miss_rate"
    assert 0.5 < thresholds.good_threshold <= np.nextafter(0.5, 1.0)
    assert thresholds.val["miss_rate"] == 0.0
    assert thresholds.val["overkill_rate"] == 0.0  # 0.9 and 0.6 both reach it
    metrics = build_metrics({"train": VAL, "val": VAL, "test": TEST}, thresholds, _params())
    # as trained (argmax): test image 0 good, 1 scratch, 2 called good (a miss)
    assert metrics["test"]["miss_rate"] == 0.5
    assert metrics["test"]["overkill_rate"] == 0.0
    # at the operating point: image 2 (0.7) is still good; image 0 is rejected as scratch
    operating = metrics["operating"]["test"]
    assert (operating["miss_rate"], operating["overkill_rate"]) == (0.5, 1.0)
    assert operating["miss_rate_low"] <= 0.5 <= operating["miss_rate_high"]
    assert metrics["train_val_gap"] == {"accuracy": 0.0, "macro_f1": 0.0}
    # defect AUC: val's defectives all look worse than its good images; on test one of two does
    assert (metrics["val"]["defect_auc"], metrics["test"]["defect_auc"]) == (1.0, 0.5)
    assert "defect_auc" not in metrics["train"]
    decisions = [row["decision"] for row in prediction_rows(TEST, thresholds, _params())]
    assert decisions == ["scratch", "scratch", "good"]
    counts = {(r["actual"], r["predicted"]): r["count"] for r in confusion_rows(TEST, decisions)}
    assert len(counts) == 9 and sum(counts.values()) == 3
    assert counts[("good", "scratch")] == 1 and counts[("hole", "good")] == 1


def test_looser_miss_limit_lowers_overkill() -> None:
    # allowing half the defectives to be missed, the threshold drops below the 0.5 defective
    thresholds = choose_thresholds(VAL, _params(max_miss_rate=0.5))
    assert 0.2 < thresholds.good_threshold <= 0.5
    assert thresholds.val["miss_rate"] == 0.5


def test_a_val_side_without_defects_falls_back_to_argmax_and_says_why() -> None:
    only_good = _side("val", MULTICLASS, [[0.9, 0.05, 0.05]], [0])
    thresholds = choose_thresholds(only_good, _params())
    assert thresholds.rule == "argmax" and thresholds.good_threshold is None
    assert "no defective" in str(thresholds.val["reason"])
    empty = Scored("val", [], np.zeros((0, 3)), np.zeros(0, dtype=int), MULTICLASS)
    metrics = build_metrics({"train": VAL, "val": empty, "test": TEST}, thresholds, _params())
    assert metrics["val"]["images"] == 0 and metrics["val"]["defect_auc"] is None
    assert metrics["train_val_gap"] == {"accuracy": None, "macro_f1": None}


def test_multilabel_per_defect_thresholds_and_decisions() -> None:
    # scratch positives score 0.8 and 0.6, negatives 0.3; hole positive 0.4, negatives 0.1, 0.2
    val = _side(
        "val",
        MULTILABEL,
        [[0.8, 0.1], [0.6, 0.4], [0.3, 0.2]],
        [[True, False], [True, True], [False, False]],
    )
    thresholds = choose_thresholds(val, _params())
    assert thresholds.rule == "f1"
    assert thresholds.per_class == {"scratch": pytest.approx(0.6), "hole": pytest.approx(0.4)}
    metrics = build_metrics({"train": val, "val": val, "test": val}, thresholds, _params())
    operating = metrics["operating"]
    assert operating["threshold_scratch"] == pytest.approx(0.6)
    assert metrics["val"]["defect_auc"] == 1.0  # highest defect scores 0.8, 0.6 against 0.3
    # at 0.5 as trained, the hole at 0.4 is missed; at its own threshold it is found
    assert metrics["val"]["per_class"]["hole"]["recall"] == 0.0
    assert operating["val"]["per_class"]["hole"]["recall"] == 1.0
    decisions = [row["decision"] for row in prediction_rows(val, thresholds, _params())]
    assert decisions == ["scratch", "scratch+hole", "good"]
