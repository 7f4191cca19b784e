"""Tests of pipeline.metrics on small cases whose answers are worked out by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.metrics import multiclass_metrics, multilabel_metrics, score_statistics


def _scores(precision: float, recall: float, f1: float, support: int) -> dict[str, Any]:
    return {
        "precision": pytest.approx(precision, abs=1e-4),
        "recall": pytest.approx(recall, abs=1e-4),
        "f1": pytest.approx(f1, abs=1e-4),
        "support": support,
    }


def test_multiclass_hand_worked_case() -> None:
    # index: 0 1 2 3 4 5 6 7 8
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2, 2, 2])
    result = multiclass_metrics(y_true, y_pred, ["good", "scratch", "hole"], good_index=0)

    assert result["images"] == 9
    assert result["accuracy"] == pytest.approx(6 / 9, abs=1e-4)
    # 5 defective images; #5 (scratch) called good. #6 (scratch called hole) is not a miss.
    assert result["miss_rate"] == pytest.approx(1 / 5, abs=1e-4)
    # 4 good images; #3 called scratch.
    assert result["overkill_rate"] == pytest.approx(1 / 4, abs=1e-4)
    assert result["per_class"] == {
        "good": _scores(3 / 4, 3 / 4, 3 / 4, 4),
        "scratch": _scores(1 / 2, 1 / 3, 0.4, 3),
        "hole": _scores(2 / 3, 1.0, 0.8, 2),
    }
    assert result["macro_f1"] == pytest.approx((0.75 + 0.4 + 0.8) / 3, abs=1e-4)
    assert result["weighted_f1"] == pytest.approx((0.75 * 4 + 0.4 * 3 + 0.8 * 2) / 9, abs=1e-4)
    assert result["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 3 + 1) / 3, abs=1e-4)
    # #6 (scratch called hole) is rejected, but as the wrong defect: 1 of 5 defective images.
    assert result["defect_confusion_rate"] == pytest.approx(1 / 5, abs=1e-4)
    assert result["low_accuracy_classes"] == "scratch"  # recall 1/3 < 0.6; good 0.75, hole 1.0


def test_multiclass_good_class_need_not_be_first() -> None:
    classes = ["scratch", "hole", "good"]
    y_true = np.array([2, 2, 0, 1])
    y_pred = np.array([2, 0, 2, 1])  # good->scratch (overkill), scratch->good (miss)
    result = multiclass_metrics(y_true, y_pred, classes, good_index=2)
    assert result["miss_rate"] == pytest.approx(0.5, abs=1e-4)
    assert result["overkill_rate"] == pytest.approx(0.5, abs=1e-4)
    assert result["accuracy"] == pytest.approx(0.5, abs=1e-4)


def test_macro_f1_averages_only_classes_present_in_the_truth() -> None:
    # crack never occurs but is predicted twice: its precision is 0 and it must not drag the mean.
    y_true = np.array([0, 1, 1, 1])
    y_pred = np.array([0, 1, 2, 2])
    result = multiclass_metrics(y_true, y_pred, ["good", "scratch", "crack"], good_index=0)
    assert result["per_class"]["good"] == _scores(1.0, 1.0, 1.0, 1)
    assert result["per_class"]["scratch"] == _scores(1.0, 1 / 3, 0.5, 3)
    assert result["per_class"]["crack"]["support"] == 0
    assert result["per_class"]["crack"]["precision"] == 0.0
    assert result["macro_f1"] == pytest.approx(0.75, abs=1e-4)
    # Nothing defective was called good and the one good image was called good.
    assert result["miss_rate"] == 0.0
    assert result["overkill_rate"] == 0.0


def test_rates_are_none_when_their_denominator_is_zero() -> None:
    classes = ["good", "scratch", "hole"]
    no_good = multiclass_metrics(np.array([1, 2]), np.array([0, 2]), classes, good_index=0)
    assert no_good["overkill_rate"] is None
    assert no_good["miss_rate"] == pytest.approx(0.5, abs=1e-4)

    no_defect = multiclass_metrics(np.array([0, 0]), np.array([0, 1]), classes, good_index=0)
    assert no_defect["miss_rate"] is None
    assert no_defect["overkill_rate"] == pytest.approx(0.5, abs=1e-4)
    assert no_defect["macro_f1"] == pytest.approx(2 / 3, abs=1e-4)  # good: p 1, r 1/2


def test_perfect_predictions() -> None:
    y = np.array([0, 1, 2, 0, 2])
    result = multiclass_metrics(y, y.copy(), ["good", "scratch", "hole"], good_index=0)
    assert result["accuracy"] == 1.0
    assert result["macro_f1"] == 1.0
    assert (result["miss_rate"], result["overkill_rate"]) == (0.0, 0.0)
    assert [s["support"] for s in result["per_class"].values()] == [2, 1, 2]


def test_multilabel_hand_worked_case() -> None:
    defects = ["scratch", "hole", "crack"]
    true_hot = np.array(
        [
            [0, 0, 0],  # good, called good
            [0, 0, 0],  # good, called scratch: overkill
            [1, 0, 0],  # exact
            [1, 1, 0],  # exact
            [0, 1, 0],  # hole, called good: miss
            [0, 1, 0],  # hole, called scratch+hole: not exact, not a miss
        ],
        dtype=bool,
    )
    pred_hot = np.array(
        [[0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=bool
    )
    result = multilabel_metrics(true_hot, pred_hot, defects)
    assert result["images"] == 6
    assert result["accuracy"] == pytest.approx(3 / 6, abs=1e-4)
    assert result["miss_rate"] == pytest.approx(1 / 4, abs=1e-4)
    assert result["overkill_rate"] == pytest.approx(1 / 2, abs=1e-4)
    assert result["per_class"]["scratch"] == _scores(2 / 4, 1.0, 2 / 3, 2)
    assert result["per_class"]["hole"] == _scores(1.0, 2 / 3, 0.8, 3)
    assert result["per_class"]["crack"]["support"] == 0
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2, abs=1e-4)
    # #5 is rejected with the wrong set (scratch+hole for hole); #4's miss is not a confusion.
    assert result["defect_confusion_rate"] == pytest.approx(1 / 4, abs=1e-4)
    assert result["low_accuracy_classes"] == ""  # crack has no support; the others >= 2/3
    strict = multilabel_metrics(true_hot, pred_hot, defects, min_class_accuracy=0.7)
    assert strict["low_accuracy_classes"] == "hole"


def test_multilabel_all_good_has_no_macro_f1_and_no_miss_rate() -> None:
    true_hot = np.zeros((4, 2), dtype=bool)
    pred_hot = np.array([[0, 0], [0, 1], [0, 0], [0, 0]], dtype=bool)
    result = multilabel_metrics(true_hot, pred_hot, ["scratch", "hole"])
    assert result["macro_f1"] is None
    assert result["miss_rate"] is None
    assert result["overkill_rate"] == pytest.approx(1 / 4, abs=1e-4)
    assert result["accuracy"] == pytest.approx(3 / 4, abs=1e-4)


def test_empty_input_scores_nothing() -> None:
    # An empty side (split.val: 0) must not crash the evaluate stage.
    empty = np.array([], dtype=np.int64)
    result = multiclass_metrics(empty, empty, ["good", "scratch"], good_index=0)
    assert result["images"] == 0
    assert result["macro_f1"] is None
    assert (result["miss_rate"], result["overkill_rate"]) == (None, None)
    assert [s["support"] for s in result["per_class"].values()] == [0, 0]

    hot = np.zeros((0, 2), dtype=bool)
    result = multilabel_metrics(hot, hot, ["scratch", "hole"])
    assert result["images"] == 0
    assert result["macro_f1"] is None
    assert (result["miss_rate"], result["overkill_rate"]) == (None, None)


def test_score_statistics_call_out_a_class_never_predicted() -> None:
    scores = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    predicted = np.eye(3, dtype=bool)[scores.argmax(axis=1)]
    stats = score_statistics(scores, predicted, ["good", "scratch", "hole"])
    assert stats["never_predicted"] == "hole"
    assert stats["per_class"]["good"] == {
        "score_mean": pytest.approx(1.7 / 3, abs=1e-4),
        "score_min": 0.2,
        "score_max": 0.9,
        "predicted": 2,
    }
    assert stats["per_class"]["hole"]["score_max"] == pytest.approx(0.1)
