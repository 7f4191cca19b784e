"""Training losses: class weights from counts, softmax and sigmoid focal losses, and a builder.

Plain arguments only (no params objects) so that the train stage can wire them to params.yaml.
Error messages name the params keys they expect to be wired to: `train.loss`,
`train.focal_gamma`, `train.focal_alpha`, `train.label_smoothing`, `train.class_weight_damping`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ApexLoopError

TASKS = ("multiclass", "multilabel")
KINDS = ("ce", "focal")


class LossConfigError(ApexLoopError):
    """A loss setting (kind, gamma, alpha, smoothing, weighting) that cannot be used."""


def _class_list(names: Sequence[str]) -> str:
    return ", ".join(names)


def class_weights(counts: Sequence[int], names: Sequence[str], damping: float) -> torch.Tensor:
    """Per-class weights w_c ∝ (1 / count_c) ** damping, as a float32 tensor of shape (C,).

    damping 0 gives all ones, 0.5 inverse square root, 1 inverse frequency. Weights are scaled
    so that the count-weighted mean weight is 1: sum_c count_c * w_c == sum_c count_c, i.e. the
    average image keeps weight 1 and the loss scale (hence a tuned learning rate) is unchanged.
    """
    if len(counts) != len(names):
        raise ValueError(
            f"got {len(counts)} counts for {len(names)} classes ({_class_list(names)})"
        )
    if not 0.0 <= damping <= 1.0:
        raise LossConfigError(
            f"train.class_weight_damping is {damping}: it must lie in [0, 1] "
            "(0 = no weighting, 0.5 = inverse square root, 1 = inverse frequency)"
        )
    for name, count in zip(names, counts, strict=True):
        if count <= 0:
            raise LossConfigError(
                f"class {name!r} has {count} training images, so it cannot be weighted: "
                "add images of it or remove it from the label set"
            )
    # float64 so that large counts with damping 1 lose nothing before the final cast.
    counts64 = torch.tensor(list(counts), dtype=torch.float64)  # (C,)
    raw = counts64.pow(-damping)
    scale = counts64.sum() / (counts64 * raw).sum()
    return (raw * scale).to(torch.float32)


def check_alpha(alpha: Sequence[float] | None, names: Sequence[str]) -> torch.Tensor | None:
    """The focal alpha as a float32 tensor of shape (C,), one value in [0, 1] per class; or None."""
    if alpha is None:
        return None
    if len(alpha) != len(names):
        raise LossConfigError(
            f"train.focal_alpha has {len(alpha)} values but there are {len(names)} classes "
            f"({_class_list(names)}): give one per class, in that order"
        )
    for name, value in zip(names, alpha, strict=True):
        if not 0.0 <= value <= 1.0:
            raise LossConfigError(
                f"train.focal_alpha for class {name!r} is {value}: each value must lie in [0, 1]"
            )
    return torch.tensor(list(alpha), dtype=torch.float32)


def _check_gamma(gamma: float) -> None:
    if not (gamma >= 0.0 and math.isfinite(gamma)):
        raise LossConfigError(
            f"train.focal_gamma is {gamma}: it must be a finite number >= 0 (0 = cross-entropy)"
        )


def _log_one_minus_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log(1 - softmax(logits)) of shape (B, C), accurate and finite-gradient even where p ≈ 1."""
    log_p = logits.log_softmax(dim=1)  # (B, C)
    # Only the top class can have p > 1/2; its 1 - p is the sum of the other classes' p, which
    # stays accurate where 1 - p itself would round to 0 (and give inf gradients for gamma < 1).
    top = logits.argmax(dim=1, keepdim=True)  # (B, 1)
    log_rest = log_p.scatter(1, top, float("-inf")).logsumexp(dim=1, keepdim=True)  # (B, 1)
    # Every other class has p <= 1/2, where log1p(-p) is accurate; the clamp only touches the
    # top column, which is replaced below, and keeps its unused value finite.
    log_q = torch.log1p(-log_p.exp().clamp(max=0.5))  # (B, C)
    return log_q.scatter(1, top, log_rest)


class FocalLoss(nn.Module):
    """Softmax focal loss: mean over the batch of sum_c -alpha_c (1 - p_c)^gamma t_c log p_c.

    t is the target distribution after label smoothing, t = (1 - eps) y + eps / C, exactly as
    nn.CrossEntropyLoss smooths. With gamma 0 and alpha None this equals nn.CrossEntropyLoss
    with the same label_smoothing. Unlike nn.CrossEntropyLoss(weight=...), which divides index
    targets by the summed weights, the mean here is always a plain mean over the batch.
    """

    alpha: torch.Tensor | None

    def __init__(
        self, gamma: float, alpha: torch.Tensor | None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        _check_gamma(gamma)
        if not 0.0 <= label_smoothing < 1.0:
            raise LossConfigError(
                f"train.label_smoothing is {label_smoothing}: it must lie in [0, 1)"
            )
        if alpha is not None and alpha.dim() != 1:
            raise ValueError(f"alpha must have shape (C,), got {tuple(alpha.shape)}")
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("alpha", None if alpha is None else alpha.detach().clone())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, C); target class indices (B,) or a distribution per row (B, C)."""
        num_classes = logits.shape[1]
        if target.dim() == 1 and not target.is_floating_point():
            dist = F.one_hot(target, num_classes).to(logits.dtype)  # (B, C)
        elif target.shape == logits.shape:
            dist = target.to(logits.dtype)
        else:
            raise ValueError(
                f"target must be class indices of shape ({logits.shape[0]},) or probabilities "
                f"of shape {tuple(logits.shape)}, got {target.dtype} {tuple(target.shape)}"
            )
        if self.label_smoothing > 0:
            dist = dist * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        per_class = -dist * logits.log_softmax(dim=1)  # (B, C)
        if self.gamma > 0:
            per_class = per_class * torch.exp(self.gamma * _log_one_minus_softmax(logits))
        if self.alpha is not None:
            per_class = per_class * self.alpha
        return per_class.sum(dim=1).mean()


class BinaryFocalLoss(nn.Module):
    """Sigmoid focal loss per label, averaged over all B * L entries (RetinaNet convention).

    Per entry: -alpha t (1 - p)^gamma log p - (1 - alpha) (1 - t) p^gamma log(1 - p). alpha_c
    weighs positives of label c and 1 - alpha_c its negatives; alpha None weighs both by 1, so
    gamma 0 and alpha None equal nn.BCEWithLogitsLoss. The loss is linear in t, so soft targets
    in [0, 1] mean the expected loss. weight (L,), if given, scales each label's whole term.
    """

    alpha: torch.Tensor | None
    weight: torch.Tensor | None

    def __init__(
        self, gamma: float, alpha: torch.Tensor | None, weight: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        _check_gamma(gamma)
        for label, tensor in (("alpha", alpha), ("weight", weight)):
            if tensor is not None and tensor.dim() != 1:
                raise ValueError(f"{label} must have shape (L,), got {tuple(tensor.shape)}")
        self.gamma = gamma
        self.register_buffer("alpha", None if alpha is None else alpha.detach().clone())
        self.register_buffer("weight", None if weight is None else weight.detach().clone())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, L); target (B, L) floats in [0, 1]."""
        if target.shape != logits.shape:
            raise ValueError(
                f"target must have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
        target = target.to(logits.dtype)
        log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)  # log p, log(1 - p)
        pos, neg = -target * log_p, -(1.0 - target) * log_q  # (B, L)
        if self.gamma > 0:
            # exp(gamma * log q) rather than q ** gamma: finite gradients where q rounds to 0.
            pos = pos * torch.exp(self.gamma * log_q)
            neg = neg * torch.exp(self.gamma * log_p)
        if self.alpha is not None:
            pos, neg = pos * self.alpha, neg * (1.0 - self.alpha)
        loss = pos + neg
        if self.weight is not None:
            loss = loss * self.weight
        return loss.mean()


def _check_choices(task: str, kind: str, names: Sequence[str], label_smoothing: float) -> None:
    if task not in TASKS:
        raise LossConfigError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    if kind not in KINDS:
        raise LossConfigError(f"train.loss is {kind!r}: use one of {', '.join(KINDS)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise LossConfigError(f"train.label_smoothing is {label_smoothing}: it must lie in [0, 1)")
    if task == "multiclass" and len(names) < 2:
        raise LossConfigError(
            f"a multiclass loss needs at least 2 classes, got {len(names)} ({_class_list(names)})"
        )
    if task == "multilabel" and label_smoothing != 0:
        raise LossConfigError(
            f"train.label_smoothing is {label_smoothing} but label smoothing is not supported "
            "for multilabel tasks: set it to 0"
        )


def build_loss(
    task: str,
    kind: str,
    names: Sequence[str],
    *,
    gamma: float,
    alpha: Sequence[float] | None,
    label_smoothing: float,
    weights: torch.Tensor | None,
) -> nn.Module:
    """The training criterion for a task ("multiclass" | "multilabel") and kind ("ce" | "focal").

    weights (C,) are per-class (or per-label) weights such as class_weights() returns. For
    multiclass focal, alpha and weights are both per-class scales, so they are multiplied. For
    multilabel focal, alpha splits positives from negatives and weights scale each label's
    whole term. alpha is a focal setting: giving it with kind "ce" is an error, not ignored.
    """
    _check_choices(task, kind, names, label_smoothing)
    if weights is not None and weights.shape != (len(names),):
        raise ValueError(
            f"weights must have shape ({len(names)},) for classes ({_class_list(names)}), "
            f"got {tuple(weights.shape)}"
        )
    if kind == "ce":
        if alpha is not None:
            raise LossConfigError(
                "train.focal_alpha is set but train.loss is 'ce': remove train.focal_alpha "
                "or set train.loss to 'focal'"
            )
        if task == "multiclass":
            return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
        # BCEWithLogitsLoss broadcasts a (L,) weight over (B, L): one weight per label.
        return nn.BCEWithLogitsLoss(weight=weights)
    alpha_tensor = check_alpha(alpha, names)
    if task == "multilabel":
        return BinaryFocalLoss(gamma, alpha_tensor, weights)
    if alpha_tensor is not None and weights is not None:
        return FocalLoss(gamma, alpha_tensor * weights, label_smoothing)
    return FocalLoss(gamma, alpha_tensor if weights is None else weights, label_smoothing)
