"""Tests of pipeline.operating on score sets whose operating points are worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError

from pipeline.errors import ApexLoopError
from pipeline.operating import (
    FALLBACK_THRESHOLD,
    Thresholds,
    bootstrap_rates,
    decide_multiclass,
    good_threshold,
    multilabel_thresholds,
    tradeoff_curve,
)

# ---------------------------------------------------------------- decide_multiclass

score_matrices = st.integers(2, 5).flatmap(
    lambda columns: arrays(
        np.float64,
        st.tuples(st.integers(1, 12), st.just(columns)),
        elements=st.floats(0, 1, allow_nan=False),
    )
)


@given(score_matrices)
def test_no_threshold_is_plain_argmax(scores: np.ndarray) -> None:
    good = scores.shape[1] - 1
    assert decide_multiclass(scores, good, None).tolist() == np.argmax(scores, axis=1).tolist()


@given(score_matrices, st.data())
def test_good_exactly_when_good_score_reaches_threshold(
    scores: np.ndarray, data: st.DataObject
) -> None:
    good = data.draw(st.integers(0, scores.shape[1] - 1))
    threshold = data.draw(st.sampled_from([*scores[:, good].tolist(), 0.0, 0.5, 1.0]))
    decided = decide_multiclass(scores, good, threshold)
    for row, call in zip(scores, decided, strict=True):
        if row[good] >= threshold:
            assert call == good
        else:
            others = [value for index, value in enumerate(row) if index != good]
            assert call != good
            assert row[call] == max(others)


def test_multiclass_decisions_by_hand_with_good_in_the_middle() -> None:
    # columns: scratch, good, hole
    scores = np.array(
        [
            [0.10, 0.60, 0.30],  # good score 0.6 >= 0.5: good
            [0.05, 0.50, 0.45],  # exactly at the threshold: good
            [0.20, 0.49, 0.31],  # below: best defect is hole, although good is the argmax
            [0.40, 0.20, 0.40],  # defect tie: the first defect column wins
        ]
    )
    original = scores.copy()
    assert decide_multiclass(scores, 1, 0.5).tolist() == [1, 1, 2, 0]
    assert decide_multiclass(scores, 1, None).tolist() == [1, 1, 1, 0]
    assert np.array_equal(scores, original)  # the caller's scores are not modified


def test_float32_scores_meet_the_threshold_as_written() -> None:
    scores = np.array([[0.3, 0.7]], dtype=np.float32)
    # 0.7 as float64 lies above float32(0.7); comparing in float32 would round it away
    assert float(np.float32(0.7)) < 0.7
    assert decide_multiclass(scores, 1, 0.7).tolist() == [0]


def test_decide_multiclass_rejects_bad_input() -> None:
    with pytest.raises(ApexLoopError, match="good_index"):
        decide_multiclass(np.zeros((2, 3)), 3, 0.5)
    with pytest.raises(ApexLoopError, match="NaN"):
        decide_multiclass(np.array([[np.nan, 0.5]]), 1, 0.5)
    with pytest.raises(ApexLoopError, match="shape"):
        decide_multiclass(np.zeros(4), 0, 0.5)


# ---------------------------------------------------------------- good_threshold


def _missed(scores: np.ndarray, defective: np.ndarray, threshold: float) -> int:
    return int(sum(1 for s, d in zip(scores, defective, strict=True) if d and s >= threshold))


def _overkilled(scores: np.ndarray, defective: np.ndarray, threshold: float) -> int:
    return int(sum(1 for s, d in zip(scores, defective, strict=True) if not d and s < threshold))


def test_ten_defectives_one_may_be_missed() -> None:
    defect_scores = [0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.60, 0.80]
    good_scores = [0.50, 0.70, 0.90, 0.95]
    scores = np.array(defect_scores + good_scores)
    defective = np.array([True] * 10 + [False] * 4)
    threshold = good_threshold(scores, defective, 0.1)
    # 0.80 may be missed; 0.60 must be caught, so t is the first float above 0.60
    assert threshold == np.nextafter(0.60, 1.0)
    assert threshold is not None
    assert _missed(scores, defective, threshold) == 1
    assert _overkilled(scores, defective, threshold) == 1  # 0.50 falls below
    # one step lower the limit breaks: two defectives pass
    assert _missed(scores, defective, 0.60) == 2


def test_tied_defectives_are_caught_together() -> None:
    # one miss allowed, but the two highest defectives tie: missing one means missing both
    scores = np.array([0.9, 0.9, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.95, 0.92])
    defective = np.array([True] * 10 + [False] * 2)
    threshold = good_threshold(scores, defective, 0.1)
    assert threshold == np.nextafter(0.9, 1.0)
    assert threshold is not None
    assert _missed(scores, defective, threshold) == 0


def test_zero_miss_limit_puts_threshold_above_every_defective() -> None:
    scores = np.array([0.2, 0.7, 0.4, 0.65, 0.9, 0.8])
    defective = np.array([True, True, True, False, False, False])
    threshold = good_threshold(scores, defective, 0.0)
    assert threshold == np.nextafter(0.7, 1.0)
    assert threshold is not None
    assert _missed(scores, defective, threshold) == 0
    assert _overkilled(scores, defective, threshold) == 1  # 0.65


def test_separable_scores_give_zero_overkill() -> None:
    scores = np.array([0.01, 0.2, 0.3, 0.6, 0.61, 0.99])
    defective = np.array([True, True, True, False, False, False])
    threshold = good_threshold(scores, defective, 0.0)
    assert threshold is not None
    assert _missed(scores, defective, threshold) == 0
    assert _overkilled(scores, defective, threshold) == 0


def test_limit_is_read_exactly_despite_float_rounding() -> None:
    # 0.29 * 100 is 28.999999999999996 in floats; 29 misses are within the limit
    assert 0.29 * 100 < 29
    scores = np.concatenate([np.arange(100) / 100.0, [2.0]])
    defective = np.array([True] * 100 + [False])
    threshold = good_threshold(scores, defective, 0.29)
    assert threshold is not None
    assert _missed(scores, defective, threshold) == 29


def test_float32_threshold_is_exact_in_float32() -> None:
    scores = np.array([0.1, 0.3, 0.7, 0.8], dtype=np.float32)
    defective = np.array([True, True, False, False])
    threshold = good_threshold(scores, defective, 0.0)
    assert threshold is not None
    assert float(np.float32(threshold)) == threshold  # survives a float32 round trip
    assert threshold > float(np.float32(0.3))
    called_good = scores >= np.float32(threshold)
    assert called_good.tolist() == [False, False, True, True]


def test_limit_one_calls_everything_good() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.3])
    defective = np.array([True, True, False, False])
    threshold = good_threshold(scores, defective, 1.0)
    assert threshold is not None
    assert all(score >= threshold for score in scores)


@pytest.mark.parametrize("defective", [[False, False, False], [True, True, True]])
def test_one_sided_set_gives_none(defective: list[bool]) -> None:
    assert good_threshold(np.array([0.2, 0.5, 0.9]), np.array(defective), 0.1) is None


@pytest.mark.parametrize("limit", [-0.1, 1.5, math.nan])
def test_bad_miss_limit_is_rejected(limit: float) -> None:
    with pytest.raises(ApexLoopError, match="max_miss_rate"):
        good_threshold(np.array([0.2, 0.5]), np.array([True, False]), limit)


labelled_scores = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 10).map(lambda n: n / 10), st.floats(0, 1, allow_nan=False)),
        st.booleans(),
    ),
    min_size=2,
    max_size=40,
).filter(lambda pairs: 0 < sum(d for _, d in pairs) < len(pairs))


@given(labelled_scores, st.floats(0, 1))
def test_threshold_is_within_limit_and_no_larger_than_needed(
    pairs: list[tuple[float, bool]], limit: float
) -> None:
    scores = np.array([s for s, _ in pairs])
    defective = np.array([d for _, d in pairs])
    allowed = limit * defective.sum() + 1e-9
    threshold = good_threshold(scores, defective, limit)
    assert threshold is not None
    assert _missed(scores, defective, threshold) <= allowed
    lower = scores[scores < threshold]
    if len(lower) == 0:
        return  # every image is called good and the limit allows it
    # the next lower distinct score, and the next lower float, both miss too many
    assert _missed(scores, defective, float(lower.max())) > allowed
    assert _missed(scores, defective, float(np.nextafter(threshold, -np.inf))) > allowed


# ---------------------------------------------------------------- tradeoff_curve


def test_tradeoff_curve_by_hand() -> None:
    scores = np.array([0.1, 0.4, 0.4, 0.8])
    defective = np.array([True, True, False, False])
    curve = tradeoff_curve(scores, defective)
    assert [point["threshold"] for point in curve[:3]] == [0.1, 0.4, 0.8]
    assert curve[3]["threshold"] > 0.8
    assert [(p["miss_rate"], p["overkill_rate"]) for p in curve] == [
        (1.0, 0.0),  # t=0.1: everything good
        (0.5, 0.0),  # t=0.4: defective 0.4 and good 0.4 pass
        (0.0, 0.5),  # t=0.8: good 0.4 rejected
        (0.0, 1.0),  # above all: everything defective
    ]


def test_tradeoff_curve_is_capped_monotone_and_keeps_its_ends() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random(5000)
    defective = scores + rng.normal(0, 0.3, 5000) < 0.5
    curve = tradeoff_curve(scores, defective, max_points=200)
    assert 100 < len(curve) <= 200
    thresholds = [p["threshold"] for p in curve]
    assert thresholds == sorted(thresholds) and len(set(thresholds)) == len(thresholds)
    assert thresholds[0] == scores.min() and thresholds[-2] == scores.max()
    miss = [p["miss_rate"] for p in curve]
    overkill = [p["overkill_rate"] for p in curve]
    assert miss == sorted(miss, reverse=True)
    assert overkill == sorted(overkill)
    assert (miss[0], overkill[0]) == (1.0, 0.0) and (miss[-1], overkill[-1]) == (0.0, 1.0)


def test_tradeoff_curve_is_empty_for_a_one_sided_set() -> None:
    assert tradeoff_curve(np.array([0.2, 0.9]), np.array([False, False])) == []


# ---------------------------------------------------------------- bootstrap_rates


def _decisions(defective: int, missed: int, good: int, overkilled: int) -> tuple[Any, Any]:
    is_defective = np.array([True] * defective + [False] * good)
    called_good = np.array(
        [True] * missed
        + [False] * (defective - missed)
        + [False] * overkilled
        + [True] * (good - overkilled)
    )
    return is_defective, called_good


def test_bootstrap_point_estimates_and_intervals_contain_them() -> None:
    result = bootstrap_rates(*_decisions(10, 2, 20, 5), resamples=500, seed=0)
    assert result["miss_rate"]["value"] == 0.2
    assert result["overkill_rate"]["value"] == 0.25
    for name in ("miss_rate", "overkill_rate"):
        interval = result[name]
        assert interval["low"] <= interval["value"] <= interval["high"]
        assert interval["low"] < interval["high"]


def test_bootstrap_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    state = np.random.get_state()
    first = bootstrap_rates(*_decisions(30, 3, 50, 7), resamples=300, seed=11)
    second = bootstrap_rates(*_decisions(30, 3, 50, 7), resamples=300, seed=11)
    assert first == second
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1])


def test_bootstrap_interval_narrows_as_images_grow() -> None:
    small = bootstrap_rates(*_decisions(20, 4, 40, 8), resamples=1000, seed=1)
    large = bootstrap_rates(*_decisions(320, 64, 640, 128), resamples=1000, seed=1)
    for name in ("miss_rate", "overkill_rate"):
        assert small[name]["value"] == large[name]["value"] == 0.2
        small_width = small[name]["high"] - small[name]["low"]
        large_width = large[name]["high"] - large[name]["low"]
        assert large_width < small_width / 2  # the width shrinks like 1/sqrt(N): 1/4 here


def test_bootstrap_width_matches_the_binomial_standard_error() -> None:
    # 400 defectives, miss 0.2: standard error sqrt(0.2 * 0.8 / 400) = 0.02
    result = bootstrap_rates(*_decisions(400, 80, 400, 40), resamples=4000, seed=5)
    assert result["miss_rate"]["low"] == pytest.approx(0.2 - 1.96 * 0.02, abs=0.008)
    assert result["miss_rate"]["high"] == pytest.approx(0.2 + 1.96 * 0.02, abs=0.008)


def test_bootstrap_with_no_good_images_leaves_overkill_undefined() -> None:
    result = bootstrap_rates(*_decisions(10, 0, 0, 0), resamples=100, seed=0)
    assert result["overkill_rate"] == {"value": None, "low": None, "high": None}
    assert result["miss_rate"] == {"value": 0.0, "low": 0.0, "high": 0.0}


def test_bootstrap_of_nothing_is_undefined() -> None:
    result = bootstrap_rates(np.array([], dtype=bool), np.array([], dtype=bool), 50, seed=0)
    assert result["miss_rate"]["value"] is None and result["overkill_rate"]["low"] is None


# ---------------------------------------------------------------- multilabel_thresholds


def test_f1_rule_by_hand() -> None:
    # class 0, positives 0.9 and 0.7: F1 = 2TP / (TP + FP + P) at
    #   0.9: 2/3, 0.8: 2/4, 0.7: 4/5, 0.6: 4/6, 0.2: 4/7 -> 0.7
    # class 1, positives 0.9 and 0.3:
    #   0.9: 2/3, 0.8: 2/4, 0.4: 2/5, 0.3: 4/6, 0.1: 4/7 -> a tie, the higher 0.9 wins
    scores = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.4], [0.6, 0.3], [0.2, 0.1]])
    truth = np.array([[1, 1], [0, 0], [1, 0], [0, 1], [0, 0]], dtype=bool)
    choice = multilabel_thresholds(scores, truth, "f1", min_recall=0.9)
    assert choice.thresholds.tolist() == [0.7, 0.9]
    assert choice.fallback == ()


def test_f1_rule_treats_tied_scores_as_one_threshold() -> None:
    # at 0.5 all three rows pass together: F1 = 2*1 / (1 + 2 + 2) = 2/5, not the 2/3 that
    # the positive alone would give; at 0.4: 2*2 / (2 + 2 + 2) = 2/3, so 0.4 is best
    scores = np.array([[0.5], [0.5], [0.5], [0.4]])
    truth = np.array([[True], [False], [False], [True]])
    assert multilabel_thresholds(scores, truth, "f1", 0.5).thresholds.tolist() == [0.4]


@pytest.mark.parametrize(
    ("min_recall", "expected"), [(0.75, 0.5), (0.5, 0.7), (1.0, 0.3), (0.26, 0.7), (0.25, 0.9)]
)
def test_recall_rule_takes_the_highest_threshold_reaching_the_recall(
    min_recall: float, expected: float
) -> None:
    positives = [0.9, 0.7, 0.5, 0.3]
    negatives = [0.95, 0.8, 0.6, 0.4, 0.2]
    scores = np.array(positives + negatives)[:, None]
    truth = np.array([True] * 4 + [False] * 5)[:, None]
    choice = multilabel_thresholds(scores, truth, "recall", min_recall)
    assert choice.thresholds.tolist() == [expected]


def test_class_without_positives_falls_back_and_is_reported() -> None:
    scores = np.array([[0.9, 0.2], [0.1, 0.8]])
    truth = np.array([[True, False], [False, False]])
    choice = multilabel_thresholds(scores, truth, "recall", 1.0)
    assert choice.thresholds.tolist() == [0.9, FALLBACK_THRESHOLD]
    assert choice.fallback == (1,)


def test_multilabel_rejects_bad_rule_recall_and_shapes() -> None:
    scores, truth = np.zeros((2, 1)), np.array([[True], [False]])
    with pytest.raises(ApexLoopError, match="rule"):
        multilabel_thresholds(scores, truth, "precision", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ApexLoopError, match="min_recall"):
        multilabel_thresholds(scores, truth, "recall", 0.0)
    with pytest.raises(ApexLoopError, match="truth"):
        multilabel_thresholds(scores, truth[:1], "f1", 0.5)


# ---------------------------------------------------------------- Thresholds


def _multiclass_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "version": 1,
        "task": "multiclass",
        "classes": ["scratch", "good", "hole"],
        "good_class": "good",
        "outputs": ["scratch", "good", "hole"],
        "rule": "max_miss_rate",
        "good_threshold": 0.4,
        "per_class": {},
        "tta": "none",
        "val": {"max_miss_rate": 0.05, "miss_rate": 0.04, "overkill_rate": 0.1, "images": 120},
    }
    return record | changes


def _multilabel_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "version": 1,
        "task": "multilabel",
        "classes": ["good", "scratch", "hole"],
        "good_class": "good",
        "outputs": ["scratch", "hole"],
        "rule": "f1",
        "good_threshold": None,
        "per_class": {"scratch": 0.5, "hole": 0.7},
        "tta": "none",
        "val": {"fallback": []},
    }
    return record | changes


def test_round_trip_and_json_layout(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "thresholds.json"
    record = Thresholds(**_multiclass_record())
    record.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == _multiclass_record()
    assert Thresholds.load(path) == record
    assert [p.name for p in path.parent.iterdir()] == ["thresholds.json"]  # no temp files left


def test_multiclass_decide_names_classes() -> None:
    record = Thresholds(**_multiclass_record())
    scores = np.array([[0.1, 0.45, 0.45], [0.5, 0.39, 0.11], [0.2, 0.4, 0.4]])
    assert record.decide(scores) == ["good", "scratch", "good"]
    # good is the argmax here, but its 0.35 is below the 0.4 threshold: the best defect wins
    close_call = np.array([[0.3, 0.35, 0.35]])
    assert record.decide(close_call) == ["hole"]
    argmax = Thresholds(**_multiclass_record(rule="argmax", good_threshold=None))
    assert argmax.decide(close_call) == ["good"]


def test_multilabel_decide_joins_defects_or_says_good(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    Thresholds(**_multilabel_record()).save(path)
    record = Thresholds.load(path)
    scores = np.array([[0.5, 0.7], [0.49, 0.71], [0.1, 0.69], [0.9, 0.1]])
    assert record.decide(scores) == ["scratch+hole", "hole", "good", "scratch"]
    with pytest.raises(ApexLoopError, match="shape"):
        record.decide(np.zeros((1, 3)))


def _write(path: Path, record: Any) -> Path:
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def test_missing_key_names_the_file_and_key(tmp_path: Path) -> None:
    record = _multiclass_record()
    del record["good_threshold"]
    path = _write(tmp_path / "thresholds.json", record)
    with pytest.raises(ApexLoopError, match=r"thresholds\.json.*\n.*missing key 'good_threshold'"):
        Thresholds.load(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rule": "magic"}, "bad value for 'rule'"),
        ({"good_threshold": "0.4"}, "bad value for 'good_threshold'"),
        ({"version": 2}, "bad value for 'version'"),
        ({"surprise": 1}, "unknown key 'surprise'"),
        ({"rule": "argmax"}, "good_threshold is set iff rule is max_miss_rate"),
        ({"good_class": "ok"}, "good_class 'ok' is not in classes"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    path = _write(tmp_path / "thresholds.json", _multiclass_record(**changes))
    with pytest.raises(ApexLoopError, match=message):
        Thresholds.load(path)


def test_multilabel_needs_a_threshold_per_defect(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.json", _multilabel_record(per_class={"scratch": 0.5}))
    with pytest.raises(ApexLoopError, match="per_class must have one threshold"):
        Thresholds.load(path)


def test_defect_names_with_plus_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"must not contain '\+'"):
        Thresholds(
            **_multilabel_record(
                classes=["good", "a+b", "hole"],
                outputs=["a+b", "hole"],
                per_class={"a+b": 0.5, "hole": 0.5},
            )
        )


def test_broken_and_missing_files_are_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "task": ', encoding="utf-8")
    with pytest.raises(ApexLoopError, match=r"broken\.json: not valid JSON"):
        Thresholds.load(broken)
    listed = _write(tmp_path / "list.json", [])
    with pytest.raises(ApexLoopError, match="expected a JSON object"):
        Thresholds.load(listed)
    with pytest.raises(ApexLoopError, match=r"absent\.json: thresholds file not found"):
        Thresholds.load(tmp_path / "absent.json")
