"""Operating points: the thresholds that turn model scores into the line's decisions.

Multiclass: an image is called good iff its good-class score >= `good_threshold`, otherwise
the highest-scoring defect class; no threshold means plain argmax. The threshold is chosen on
validation data as the lowest-overkill one whose miss rate stays within a limit.
Multilabel: one threshold per defect output, a defect is reported iff its score >= threshold.
miss rate = defective images called good / defective images;
overkill rate = good images called defective / good images (as in pipeline.metrics).
The chosen thresholds travel to the predict command as a validated JSON `Thresholds` record.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from pipeline.errors import ApexLoopError
from pipeline.params import Tta
from pipeline.paths import write_text_atomic

THRESHOLDS_VERSION = 1
# a defect output with no positive validation image keeps this threshold (and is reported)
FALLBACK_THRESHOLD = 0.5
# slack on "rate * count" so that e.g. 0.29 of 100 images allows 29, not 28 (float rounding)
_COUNT_SLACK = 1e-9
_INTERVAL = (2.5, 97.5)  # percentiles of a 95% bootstrap interval

MultilabelRule = Literal["f1", "recall"]
Rule = Literal["argmax", "max_miss_rate", "f1", "recall"]


class OperatingError(ApexLoopError):
    """Scores, labels or a thresholds file cannot give a sound operating point."""


def _scores_matrix(scores: np.ndarray, columns: int | None = None) -> np.ndarray:
    array = np.asarray(scores)
    if array.ndim != 2 or (columns is not None and array.shape[1] != columns):
        want = f"(N, {columns})" if columns is not None else "(N, C)"
        raise OperatingError(f"scores have shape {array.shape}, expected {want}")
    if not np.isfinite(array).all():
        raise OperatingError("scores contain NaN or infinite values; the model output is broken")
    return array


def _scores_and_flags(scores: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a 1-D score vector and its same-length boolean flags; scores become float."""
    values = np.asarray(scores)
    values = values if np.issubdtype(values.dtype, np.floating) else values.astype(np.float64)
    marks = np.asarray(flags, dtype=bool)
    if values.ndim != 1 or values.shape != marks.shape:
        raise OperatingError(f"scores {values.shape} and flags {marks.shape}: expected equal (N,)")
    if not np.isfinite(values).all():
        raise OperatingError("scores contain NaN or infinite values; the model output is broken")
    return values, marks


def decide_multiclass(scores: np.ndarray, good_index: int, threshold: float | None) -> np.ndarray:
    """Class index per image from softmax scores (N, C).

    threshold None: argmax over all classes. Otherwise good iff `scores[:, good_index] >=
    threshold`, else the argmax over the defect columns only (first column wins ties).
    """
    array = _scores_matrix(scores)
    if not 0 <= good_index < array.shape[1] or array.shape[1] < 2:
        raise OperatingError(f"good_index {good_index} for {array.shape[1]} score columns")
    if threshold is None:
        return np.argmax(array, axis=1)
    defects_only = array.astype(np.float64)  # a copy: the caller's scores stay untouched
    defects_only[:, good_index] = -np.inf
    best_defect = np.argmax(defects_only, axis=1)
    # compared in float64 so float32 scores meet the threshold exactly as written
    is_good = array[:, good_index].astype(np.float64) >= threshold
    return np.where(is_good, good_index, best_defect)


def good_threshold(
    good_scores: np.ndarray, is_defective: np.ndarray, max_miss_rate: float
) -> float | None:
    """Lowest-overkill good-score threshold whose miss rate on this data is <= max_miss_rate.

    Miss(t) falls and overkill(t) rises with t, so this is the smallest t within the limit.
    With k = floor(max_miss_rate * D + 1e-9) of the D defective images allowed to be missed
    and d the (k+1)-th largest defective good-score, t = nextafter(d, +inf) in the scores' own
    float dtype: the smallest representable value strictly above d (ties at d are all caught,
    so the miss rate may be below the limit). Every t' <= d misses more than k images; t is
    exact in float32 and float64. If k >= D (limit 1) every image may be called good and t is
    the smallest score. None when the set has no defective or no good image.
    """
    if not 0.0 <= max_miss_rate <= 1.0:  # also rejects NaN
        raise OperatingError(f"max_miss_rate {max_miss_rate}: expected 0 <= value <= 1")
    values, defective = _scores_and_flags(good_scores, is_defective)
    defect_scores = np.sort(values[defective])[::-1]  # descending
    if len(defect_scores) == 0 or defective.all():
        return None
    allowed = math.floor(max_miss_rate * len(defect_scores) + _COUNT_SLACK)
    if allowed >= len(defect_scores):
        return float(values.min())
    caught = defect_scores[allowed]
    return float(np.nextafter(caught, caught.dtype.type(np.inf)))


def tradeoff_curve(
    good_scores: np.ndarray, is_defective: np.ndarray, max_points: int = 1000
) -> list[dict[str, float]]:
    """(threshold, miss_rate, overkill_rate) at each distinct score, ascending threshold.

    At t the good iff `score >= t` rule applies: the lowest point calls every image good
    (miss 1, overkill 0); one extra point just above the highest score calls all defective
    (miss 0, overkill 1). Miss never rises and overkill never falls along the list. With more
    than `max_points` distinct scores, evenly spaced ranks of them are kept (quantiles, ends
    included). Rates rounded to 4 places. Empty when there are no defective or no good images.
    """
    if max_points < 2:
        raise OperatingError(f"max_points {max_points}: expected at least 2")
    values, defective = _scores_and_flags(good_scores, is_defective)
    defect_sorted, good_sorted = np.sort(values[defective]), np.sort(values[~defective])
    if len(defect_sorted) == 0 or len(good_sorted) == 0:
        return []
    candidates = np.unique(values)
    if len(candidates) + 1 > max_points:
        ranks = np.linspace(0, len(candidates) - 1, max_points - 1).round().astype(int)
        candidates = candidates[np.unique(ranks)]
    top = candidates[-1]
    candidates = np.append(candidates, np.nextafter(top, top.dtype.type(np.inf)))
    defects_below = np.searchsorted(defect_sorted, candidates, side="left")
    goods_below = np.searchsorted(good_sorted, candidates, side="left")
    miss = np.round((len(defect_sorted) - defects_below) / len(defect_sorted), 4)
    overkill = np.round(goods_below / len(good_sorted), 4)
    return [
        {"threshold": float(t), "miss_rate": float(m), "overkill_rate": float(k)}
        for t, m, k in zip(candidates, miss, overkill, strict=True)
    ]


def _interval(hits: np.ndarray, totals: np.ndarray, value: float | None) -> dict[str, Any]:
    """Percentile interval of hits/totals over resamples; resamples with totals 0 are NaN."""
    rates = np.divide(hits, totals, out=np.full(hits.shape, np.nan), where=totals > 0)
    if value is None or np.isnan(rates).all():
        return {"value": value, "low": None, "high": None}
    low, high = np.nanpercentile(rates, _INTERVAL)
    return {"value": value, "low": round(float(low), 4), "high": round(float(high), 4)}


def bootstrap_rates(
    is_defective: np.ndarray, called_good: np.ndarray, resamples: int, seed: int
) -> dict[str, Any]:
    """95% percentile bootstrap intervals of miss and overkill rate at a fixed decision.

    Resampling N images with replacement only matters through the counts of the four
    (defective?, called good?) cells, and those counts follow a multinomial with the cells'
    shares, so each resample is one multinomial draw from `np.random.default_rng(seed)`:
    exact, vectorised, O(resamples) memory. Resamples without defective (good) images are left
    out of the miss (overkill) interval. Returns {"miss_rate": {"value", "low", "high"},
    "overkill_rate": {...}, "resamples": n}; figures rounded to 4 places, None when undefined.
    """
    if resamples < 1:
        raise OperatingError(f"resamples {resamples}: expected at least 1")
    defective = np.asarray(is_defective, dtype=bool)
    good_call = np.asarray(called_good, dtype=bool)
    if defective.ndim != 1 or defective.shape != good_call.shape:
        raise OperatingError(f"flags {defective.shape} and {good_call.shape}: expected equal (N,)")
    cells = np.array(
        [
            (defective & good_call).sum(),  # missed
            (defective & ~good_call).sum(),  # caught
            (~defective & ~good_call).sum(),  # overkilled
            (~defective & good_call).sum(),  # passed
        ]
    )
    images = len(defective)
    rng = np.random.default_rng(seed)
    if images:
        counts = rng.multinomial(images, cells / images, size=resamples)  # (R, 4)
    else:
        counts = np.zeros((resamples, 4), dtype=np.int64)

    missed, caught, overkilled, passed = (int(count) for count in cells)
    return {
        "miss_rate": _interval(
            counts[:, 0], counts[:, 0] + counts[:, 1], _share(missed, missed + caught)
        ),
        "overkill_rate": _interval(
            counts[:, 2], counts[:, 2] + counts[:, 3], _share(overkilled, overkilled + passed)
        ),
        "resamples": resamples,
    }


def _share(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


@dataclass(frozen=True)
class MultilabelChoice:
    """Per-output thresholds (D,) and the outputs that fell back to FALLBACK_THRESHOLD."""

    thresholds: np.ndarray
    fallback: tuple[int, ...]


def _best_f1(scores: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], truth[order]
    true_pos = np.cumsum(hits)
    false_pos = np.cumsum(~hits)
    last_of_value = np.append(ranked[1:] != ranked[:-1], True)  # end of each tie group
    true_pos, false_pos = true_pos[last_of_value], false_pos[last_of_value]
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P); exact ratios of integers, so equal
    # F1s compare equal and argmax picks the first, i.e. the highest threshold.
    f1 = 2 * true_pos / (true_pos + false_pos + truth.sum())
    return float(ranked[last_of_value][np.argmax(f1)])


def _recall_threshold(scores: np.ndarray, truth: np.ndarray, min_recall: float) -> float:
    positives = np.sort(scores[truth])[::-1]  # descending
    needed = max(1, math.ceil(min_recall * len(positives) - _COUNT_SLACK))
    # any threshold above the needed-th best positive keeps fewer than `needed` positives
    return float(positives[needed - 1])


def multilabel_thresholds(
    scores: np.ndarray, truth: np.ndarray, rule: MultilabelRule, min_recall: float
) -> MultilabelChoice:
    """Per-output thresholds from validation sigmoid scores (N, D) and truth (N, D).

    "f1": the threshold (a score value) maximising F1, ties to the higher threshold.
    "recall": the highest threshold whose recall >= min_recall (0 < min_recall <= 1), which
    gives the best precision under that constraint; min_recall is ignored for "f1".
    Predicted positive iff score >= threshold. An output with no positive image keeps
    FALLBACK_THRESHOLD and is listed in `fallback`.
    """
    matrix = _scores_matrix(scores)
    hot = np.asarray(truth, dtype=bool)
    if hot.shape != matrix.shape:
        raise OperatingError(f"truth {hot.shape} and scores {matrix.shape}: expected equal (N, D)")
    if rule not in ("f1", "recall"):
        raise OperatingError(f"rule {rule!r}: expected 'f1' or 'recall'")
    if rule == "recall" and not 0.0 < min_recall <= 1.0:
        raise OperatingError(f"min_recall {min_recall}: expected 0 < value <= 1")
    chosen = np.full(matrix.shape[1], FALLBACK_THRESHOLD, dtype=np.float64)
    fallback = []
    for column in range(matrix.shape[1]):
        values, hits = matrix[:, column], hot[:, column]
        if not hits.any():
            fallback.append(column)
        elif rule == "f1":
            chosen[column] = _best_f1(values, hits)
        else:
            chosen[column] = _recall_threshold(values, hits, min_recall)
    return MultilabelChoice(chosen, tuple(fallback))


class Thresholds(BaseModel):
    """The operating point the predict command applies, saved next to the evaluation.

    Invariants: good_class is one of classes. multiclass: outputs == classes, rule is "argmax"
    (good_threshold None) or "max_miss_rate" (good_threshold a float), per_class empty.
    multilabel: outputs == the defect classes in class order, rule "f1" or "recall",
    good_threshold None, per_class has exactly one finite threshold per output, and no defect
    name contains "+" (decisions join defects with "+"). The thresholds hold for scores
    averaged over the `tta` views only, so predict scores that way too. `val` holds the
    validation figures the point was chosen with (JSON values only).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1]
    task: Literal["multiclass", "multilabel"]
    classes: list[str] = Field(min_length=2)
    good_class: str
    outputs: list[str]
    rule: Rule
    good_threshold: float | None
    per_class: dict[str, float]
    tta: Tta  # the test-time flips the scores were averaged over when the point was chosen
    val: dict[str, JsonValue]

    @model_validator(mode="after")
    def _consistent(self) -> Thresholds:
        if self.good_class not in self.classes:
            raise ValueError(f"good_class {self.good_class!r} is not in classes {self.classes}")
        if self.task == "multiclass":
            self._check_multiclass()
        else:
            self._check_multilabel()
        return self

    def _check_multiclass(self) -> None:
        if self.outputs != self.classes:
            raise ValueError("multiclass outputs must equal classes")
        if self.rule not in ("argmax", "max_miss_rate") or self.per_class:
            raise ValueError("multiclass takes rule argmax or max_miss_rate, no per_class")
        if (self.good_threshold is None) != (self.rule == "argmax"):
            raise ValueError("good_threshold is set iff rule is max_miss_rate")
        if self.good_threshold is not None and not math.isfinite(self.good_threshold):
            raise ValueError(f"good_threshold {self.good_threshold} is not finite")

    def _check_multilabel(self) -> None:
        defects = [name for name in self.classes if name != self.good_class]
        if self.outputs != defects:
            raise ValueError(f"multilabel outputs must be the defect classes {defects}")
        if self.rule not in ("f1", "recall") or self.good_threshold is not None:
            raise ValueError("multilabel takes rule f1 or recall and no good_threshold")
        if sorted(self.per_class) != sorted(defects):
            raise ValueError(f"per_class must have one threshold for each of {defects}")
        if not all(math.isfinite(value) for value in self.per_class.values()):
            raise ValueError("per_class thresholds must be finite")
        if any("+" in name for name in defects):
            raise ValueError("defect names must not contain '+' (decisions join them with '+')")

    def decide(self, scores: np.ndarray) -> list[str]:
        """Readable decision per image for scores (N, len(outputs)).

        multiclass: the class name. multilabel: the defects at/above their threshold joined
        by "+" in output order, or the good class when there are none.
        """
        matrix = _scores_matrix(scores, len(self.outputs))
        if self.task == "multiclass":
            good = self.classes.index(self.good_class)
            picked = decide_multiclass(matrix, good, self.good_threshold)
            return [self.classes[index] for index in picked]
        limits = np.array([self.per_class[name] for name in self.outputs])
        hits = matrix >= limits  # (N, D)
        return [
            "+".join(name for name, hit in zip(self.outputs, row, strict=True) if hit)
            or self.good_class
            for row in hits
        ]

    def save(self, path: Path) -> None:
        """Write the record as JSON atomically (sorted keys, so diffs stay small)."""
        text = json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True, allow_nan=False)
        write_text_atomic(path, text + "\n")

    @classmethod
    def load(cls, path: Path) -> Thresholds:
        """Read and validate a saved record; errors name the file and the bad key."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OperatingError(
                f"{path}: thresholds file not found; run the evaluate stage to write it"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OperatingError(
                f"{path}: not valid JSON ({exc}); rerun the evaluate stage to rewrite it"
            ) from None
        if not isinstance(data, dict):
            raise OperatingError(f"{path}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data, strict=True)  # JSON has no excuse for "0.5"
        except ValidationError as exc:
            lines = [_describe(dict(error)) for error in exc.errors()]
            raise OperatingError(
                f"{path}: invalid thresholds file (rerun the evaluate stage):\n  "
                + "\n  ".join(lines)
            ) from None


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"missing key '{key}'"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if not key:
        return error["msg"]
    return f"bad value for '{key}' (got {error.get('input')!r}): {error['msg']}"
