"""Label issues: Cleanlab on out-of-sample predicted probabilities from K-fold cross-validation
of a fast classifier on image embeddings.

Folds are grouped (all shots of a part in one fold) so a part never predicts itself. A class with
fewer images (multilabel: positives) than folds cannot be cross-validated: its images are left
out of the step, never guessed at, and the class is reported as skipped.
A suggestion is *confident* when the given label's probability is at most
`prob_threshold_correct` and the suggested label's at least `prob_threshold_wrong`; only
confident suggestions are applied by the `relabel` action.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.multilabel_classification import filter as multilabel_filter
from cleanlab.multilabel_classification.rank import get_label_quality_scores as multilabel_quality
from cleanlab.rank import get_label_quality_scores
from sklearn.base import ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.params import LabelIssueParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelFinding:
    """The label-issue verdict on one image (None fields: the image was not assessed)."""

    quality: float | None = None
    suggested: tuple[str, ...] | None = None
    is_issue: bool = False
    is_confident: bool = False


def _classifier(params: LabelIssueParams) -> ClassifierMixin:
    if params.classifier == "knn":
        model: ClassifierMixin = KNeighborsClassifier(n_neighbors=10, weights="distance")
    else:
        model = LogisticRegression(max_iter=2000, C=0.5)
    return make_pipeline(StandardScaler(), model)


def _oof_multiclass(
    x: np.ndarray, y: np.ndarray, groups: Sequence[str], classes: int, params: LabelIssueParams
) -> np.ndarray:
    """Out-of-fold class probabilities (N, classes)."""
    folds = StratifiedGroupKFold(n_splits=params.folds, shuffle=True, random_state=params.seed)
    probs = np.zeros((len(y), classes))
    for train, test in folds.split(x, y, groups):
        model = clone(_classifier(params)).fit(x[train], y[train])
        probs[np.ix_(test, model.classes_)] = model.predict_proba(x[test])
    return probs


def _oof_multilabel(
    x: np.ndarray, y: np.ndarray, groups: Sequence[str], params: LabelIssueParams
) -> np.ndarray:
    """Out-of-fold per-label probabilities (N, labels)."""
    folds = GroupKFold(n_splits=params.folds, shuffle=True, random_state=params.seed)
    probs = np.zeros(y.shape)
    for train, test in folds.split(x, y, groups):
        model = OneVsRestClassifier(clone(_classifier(params))).fit(x[train], y[train])
        probs[test] = model.predict_proba(x[test])
    return probs


def assess_multiclass(
    x: np.ndarray, labels: Sequence[str], groups: Sequence[str], params: LabelIssueParams
) -> tuple[list[LabelFinding], dict[str, int]]:
    """Findings per image and the classes skipped (name -> images) for too few images."""
    counts = Counter(labels)
    skipped = {name: n for name, n in sorted(counts.items()) if n < params.folds}
    names = sorted(name for name in counts if name not in skipped)
    used = [i for i, label in enumerate(labels) if label not in skipped]
    findings = [LabelFinding()] * len(labels)
    if len(names) < 2:
        return findings, skipped
    y = np.array([names.index(labels[i]) for i in used])
    probs = _oof_multiclass(x[used], y, [groups[i] for i in used], len(names), params)
    issues = find_label_issues(y, probs, filter_by=params.filter_by, n_jobs=1)
    quality = get_label_quality_scores(y, probs)
    for position, index in enumerate(used):
        best = int(probs[position].argmax())
        confident = (
            probs[position, y[position]] <= params.prob_threshold_correct
            and probs[position, best] >= params.prob_threshold_wrong
        )
        findings[index] = LabelFinding(
            float(quality[position]), (names[best],), bool(issues[position]), bool(confident)
        )
    return findings, skipped


def assess_multilabel(
    x: np.ndarray,
    labels: Sequence[Sequence[str]],
    defects: Sequence[str],
    groups: Sequence[str],
    params: LabelIssueParams,
) -> tuple[list[LabelFinding], dict[str, int]]:
    """Multilabel findings; defects with fewer positives than folds are left out of the step."""
    counts = Counter(name for row in labels for name in row)
    skipped = {name: counts[name] for name in defects if counts[name] < params.folds}
    names = [name for name in defects if name not in skipped]
    findings = [LabelFinding()] * len(labels)
    if not names:
        return findings, skipped
    y = np.array([[name in row for name in names] for row in labels], dtype=int)
    probs = _oof_multilabel(x, y, groups, params)
    indices = [list(np.flatnonzero(row)) for row in y]
    issues = multilabel_filter.find_label_issues(
        indices, probs, filter_by=params.filter_by, n_jobs=1
    )
    quality = multilabel_quality(indices, probs)
    for index, (given, p) in enumerate(zip(y, probs, strict=True)):
        suggested = p >= 0.5
        changed = suggested != given.astype(bool)
        confident = bool(changed.any()) and bool(
            np.all(
                np.where(
                    given[changed] == 1,
                    p[changed] <= params.prob_threshold_correct,
                    p[changed] >= params.prob_threshold_wrong,
                )
            )
        )
        findings[index] = LabelFinding(
            float(quality[index]),
            tuple(n for n, s in zip(names, suggested, strict=True) if s),
            bool(issues[index]),
            confident,
        )
    return findings, skipped
