"""Tests of pipeline.losses: equivalences with torch's losses, focal behaviour, weights, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pipeline.losses import (
    BinaryFocalLoss,
    FocalLoss,
    LossConfigError,
    build_loss,
    check_alpha,
    class_weights,
)

NAMES = ["good", "scratch", "hole", "crack", "stain"]


def _logits(batch: int, classes: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=generator) * scale


def _labels(batch: int, classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (batch,), generator=generator)


def _soft(batch: int, classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, classes, generator=generator).softmax(dim=1)


def _multihot(batch: int, labels: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, labels, generator=generator) < 0.3).float()


# --- equivalence with torch ------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_focal_gamma_zero_equals_cross_entropy_on_indices(smoothing: float) -> None:
    logits, target = _logits(16, 5, seed=1), _labels(16, 5, seed=2)
    ours = FocalLoss(0.0, None, smoothing)(logits, target)
    torchs = nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, target)
    torch.testing.assert_close(ours, torchs)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_focal_gamma_zero_equals_cross_entropy_on_soft_targets(smoothing: float) -> None:
    logits, target = _logits(16, 5, seed=3), _soft(16, 5, seed=4)
    ours = FocalLoss(0.0, None, smoothing)(logits, target)
    torchs = nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, target)
    torch.testing.assert_close(ours, torchs)


def test_focal_gamma_zero_gradients_equal_cross_entropy() -> None:
    logits, target = _logits(8, 4, seed=5), _labels(8, 4, seed=6)
    ours_in, torch_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    FocalLoss(0.0, None, 0.1)(ours_in, target).backward()
    nn.CrossEntropyLoss(label_smoothing=0.1)(torch_in, target).backward()
    assert ours_in.grad is not None and torch_in.grad is not None
    torch.testing.assert_close(ours_in.grad, torch_in.grad)


@pytest.mark.parametrize("soft", [False, True])
def test_binary_focal_gamma_zero_equals_bce(soft: bool) -> None:
    logits = _logits(16, 4, seed=7)
    target = torch.rand(16, 4, generator=torch.Generator().manual_seed(8)) if soft else None
    target = _multihot(16, 4, seed=8) if target is None else target
    ours = BinaryFocalLoss(0.0, None)(logits, target)
    torch.testing.assert_close(ours, nn.BCEWithLogitsLoss()(logits, target))


# --- hand-worked values ----------------------------------------------------------------------


def test_focal_hand_worked_two_class_tie() -> None:
    # p = 1/2 for both classes: loss = (1 - 1/2)^2 * ln 2.
    loss = FocalLoss(2.0, None)(torch.zeros(3, 2), torch.tensor([0, 1, 1]))
    assert loss.item() == pytest.approx(0.25 * math.log(2), rel=1e-6)


def test_binary_focal_hand_worked_zero_logit() -> None:
    # p = 1/2: positive and negative entries both cost (1/2)^2 * ln 2; alpha 0.25 / 0.75 split.
    target = torch.tensor([[1.0, 0.0]])
    plain = BinaryFocalLoss(2.0, None)(torch.zeros(1, 2), target)
    assert plain.item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    weighted = BinaryFocalLoss(2.0, torch.tensor([0.25, 0.25]))(torch.zeros(1, 2), target)
    assert weighted.item() == pytest.approx((0.25 + 0.75) / 2 * 0.25 * math.log(2), rel=1e-6)


def test_focal_hand_worked_top_and_other_class() -> None:
    # p = (1/4, 3/4); row 1 targets the top class, row 2 the other: (1 - p)^1 * -log p each.
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    loss = FocalLoss(1.0, None)(logits, torch.tensor([1, 0]))
    expected = (0.25 * math.log(4 / 3) + 0.75 * math.log(4.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# --- focal behaviour -------------------------------------------------------------------------


def test_focal_shrinks_easy_examples_much_more_than_hard_ones() -> None:
    easy = torch.tensor([[4.0, 0.0, 0.0]])  # confident and correct: p ≈ 0.96
    hard = torch.tensor([[0.0, 4.0, 0.0]])  # confident and wrong: p ≈ 0.02
    target = torch.tensor([0])
    easy_losses = [FocalLoss(g, None)(easy, target).item() for g in (0.0, 1.0, 2.0, 5.0)]
    hard_losses = [FocalLoss(g, None)(hard, target).item() for g in (0.0, 1.0, 2.0, 5.0)]
    assert all(a > b for a, b in itertools.pairwise(easy_losses))
    assert easy_losses[-1] < 1e-3 * easy_losses[0]
    assert hard_losses[-1] > 0.8 * hard_losses[0]


def test_binary_focal_shrinks_easy_examples() -> None:
    logits = torch.tensor([[5.0, -5.0]])  # both labels confidently right
    target = torch.tensor([[1.0, 0.0]])
    wrong = torch.tensor([[0.0, 1.0]])  # the same logits, both labels confidently wrong
    plain = BinaryFocalLoss(0.0, None)
    focal = BinaryFocalLoss(2.0, None)
    assert focal(logits, target) < 1e-3 * plain(logits, target)
    assert focal(logits, wrong) > 0.95 * plain(logits, wrong)


def test_alpha_scales_each_class_contribution() -> None:
    logits = _logits(12, 3, seed=9)
    alpha = torch.tensor([0.2, 0.5, 1.0])
    for cls in range(3):
        target = torch.full((12,), cls)
        plain = FocalLoss(2.0, None)(logits, target)
        weighted = FocalLoss(2.0, alpha)(logits, target)
        torch.testing.assert_close(weighted, alpha[cls] * plain)


def test_binary_alpha_weighs_positives_by_alpha_and_negatives_by_one_minus() -> None:
    logits = _logits(10, 2, seed=10)
    alpha = torch.tensor([0.25, 0.9])
    ones, zeros = torch.ones(10, 2), torch.zeros(10, 2)
    for target, factor in ((ones, alpha), (zeros, 1 - alpha)):
        for label in range(2):
            column = logits[:, label : label + 1]  # (B, 1)
            plain = BinaryFocalLoss(2.0, None)(column, target[:, :1])
            weighted = BinaryFocalLoss(2.0, alpha[label : label + 1])(column, target[:, :1])
            torch.testing.assert_close(weighted, factor[label] * plain)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_soft_one_hot_targets_equal_index_targets(gamma: float) -> None:
    logits, target = _logits(10, 5, seed=11), _labels(10, 5, seed=12)
    loss = FocalLoss(gamma, torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9]), label_smoothing=0.1)
    one_hot = nn.functional.one_hot(target, 5).float()
    torch.testing.assert_close(loss(logits, one_hot), loss(logits, target))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_gradients_finite_for_extreme_logits(gamma: float) -> None:
    logits = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, -100.0]], requires_grad=True)
    multiclass = FocalLoss(gamma, torch.tensor([0.5, 1.0, 0.25]), label_smoothing=0.1)
    soft = torch.tensor([[0.0, 0.7, 0.3], [1.0, 0.0, 0.0]])  # second row confidently wrong
    for target in (torch.tensor([0, 2]), soft):
        loss = multiclass(logits, target)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    binary = BinaryFocalLoss(gamma, torch.tensor([0.25, 0.5, 0.75]))
    loss = binary(logits, torch.tensor([[1.0, 1.0, 0.5], [0.0, 0.0, 1.0]]))
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_loss_does_not_keep_caller_alpha_alias() -> None:
    alpha = torch.tensor([0.5, 0.5])
    loss = FocalLoss(2.0, alpha)
    alpha.fill_(0.0)
    assert loss(torch.zeros(1, 2), torch.tensor([0])).item() > 0


# --- class weights ---------------------------------------------------------------------------

counts_strategy = st.lists(st.integers(min_value=1, max_value=100_000), min_size=1, max_size=12)


def _names(n: int) -> list[str]:
    return [f"class{i}" for i in range(n)]


@given(counts=counts_strategy, damping=st.floats(min_value=0.0, max_value=1.0))
@settings(max_examples=60, deadline=None)
def test_class_weights_keep_count_weighted_mean_at_one(counts: list[int], damping: float) -> None:
    weights = class_weights(counts, _names(len(counts)), damping).double()
    total = torch.tensor(counts, dtype=torch.float64)
    assert weights.dtype == torch.float64 and weights.shape == (len(counts),)
    assert (weights > 0).all()
    assert (total * weights).sum().item() == pytest.approx(total.sum().item(), rel=1e-5)


@given(counts=counts_strategy, damping=st.floats(min_value=0.05, max_value=1.0))
@settings(max_examples=60, deadline=None)
def test_rarer_classes_get_larger_weights(counts: list[int], damping: float) -> None:
    weights = class_weights(counts, _names(len(counts)), damping)
    for i, j in ((i, j) for i in range(len(counts)) for j in range(len(counts))):
        if counts[i] < counts[j]:
            assert weights[i] > weights[j]
        elif counts[i] == counts[j]:
            assert weights[i] == weights[j]


@given(counts=counts_strategy)
@settings(max_examples=30, deadline=None)
def test_damping_zero_gives_ones_and_one_gives_inverse_frequency(counts: list[int]) -> None:
    names = _names(len(counts))
    assert torch.equal(class_weights(counts, names, 0.0), torch.ones(len(counts)))
    inverse = class_weights(counts, names, 1.0).double() * torch.tensor(counts).double()
    # w_c * count_c is the same for every class: each class carries equal total weight.
    # float32 weights: each product is exact only to float32 precision (~1e-7 relative)
    torch.testing.assert_close(
        inverse, torch.full_like(inverse, inverse[0].item()), rtol=1e-6, atol=0
    )


def test_class_weights_half_damping_is_inverse_square_root() -> None:
    weights = class_weights([100, 25], ["good", "scratch"], 0.5)
    assert weights[1].item() / weights[0].item() == pytest.approx(2.0, rel=1e-6)


def test_class_weights_errors_name_the_class_and_key() -> None:
    with pytest.raises(LossConfigError, match=r"'hole' has 0 training images"):
        class_weights([10, 5, 0], ["good", "scratch", "hole"], 0.5)
    with pytest.raises(LossConfigError, match=r"train\.class_weight_damping is 1\.5"):
        class_weights([10, 5], ["good", "scratch"], 1.5)
    with pytest.raises(LossConfigError, match=r"class_weight_damping is nan"):
        class_weights([10, 5], ["good", "scratch"], float("nan"))


# --- alpha checks and the builder ------------------------------------------------------------


def test_check_alpha_wrong_length_names_classes_in_order() -> None:
    expected = (
        "train.focal_alpha has 3 values but there are 5 classes "
        "(good, scratch, hole, crack, stain): give one per class, in that order"
    )
    with pytest.raises(LossConfigError) as caught:
        check_alpha([0.25, 0.5, 0.75], NAMES)
    assert str(caught.value) == expected


def test_check_alpha_out_of_range_names_the_class() -> None:
    with pytest.raises(LossConfigError, match=r"class 'hole' is 1\.5"):
        check_alpha([0.25, 0.5, 1.5, 0.5, 0.5], NAMES)
    assert check_alpha(None, NAMES) is None
    alpha = check_alpha([0.0, 0.25, 0.5, 0.75, 1.0], NAMES)
    assert alpha is not None
    assert torch.equal(alpha, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


@pytest.mark.parametrize(
    ("task", "kind", "smoothing", "message"),
    [
        ("regression", "ce", 0.0, r"unknown task 'regression'"),
        ("multiclass", "hinge", 0.0, r"train\.loss is 'hinge'"),
        ("multilabel", "focal", 0.1, r"not supported for multilabel"),
        ("multilabel", "ce", 0.1, r"not supported for multilabel"),
        ("multiclass", "ce", 1.0, r"train\.label_smoothing is 1\.0"),
    ],
)
def test_build_loss_rejects_bad_settings(
    task: str, kind: str, smoothing: float, message: str
) -> None:
    with pytest.raises(LossConfigError, match=message):
        build_loss(
            task, kind, NAMES, gamma=2.0, alpha=None, label_smoothing=smoothing, weights=None
        )


def test_build_loss_rejects_alpha_with_ce_and_negative_gamma() -> None:
    with pytest.raises(LossConfigError, match=r"focal_alpha is set but train\.loss is 'ce'"):
        build_loss(
            "multiclass", "ce", NAMES, gamma=0.0, alpha=[0.5] * 5, label_smoothing=0, weights=None
        )
    with pytest.raises(LossConfigError, match=r"train\.focal_gamma is -1"):
        build_loss(
            "multiclass", "focal", NAMES, gamma=-1.0, alpha=None, label_smoothing=0, weights=None
        )


def test_build_loss_multiclass_ce_applies_weights_and_smoothing() -> None:
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    loss = build_loss(
        "multiclass", "ce", NAMES, gamma=0.0, alpha=None, label_smoothing=0.1, weights=weights
    )
    assert isinstance(loss, nn.CrossEntropyLoss)
    assert loss.label_smoothing == 0.1
    assert loss.weight is not None and torch.equal(loss.weight, weights)


def test_build_loss_multilabel_ce_weighs_each_label() -> None:
    logits, target = _logits(6, 5, seed=13), _multihot(6, 5, seed=14)
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5, 3.0])
    loss = build_loss(
        "multilabel", "ce", NAMES, gamma=0.0, alpha=None, label_smoothing=0.0, weights=weights
    )
    per_entry = nn.BCEWithLogitsLoss(reduction="none")(logits, target)  # (B, L)
    torch.testing.assert_close(loss(logits, target), (per_entry * weights).mean())


def test_build_loss_multiclass_focal_multiplies_alpha_and_weights() -> None:
    logits = _logits(8, 5, seed=15)
    alpha, weights = [0.5, 0.25, 1.0, 0.75, 0.1], torch.tensor([1.0, 4.0, 0.5, 2.0, 3.0])
    loss = build_loss(
        "multiclass", "focal", NAMES, gamma=2.0, alpha=alpha, label_smoothing=0, weights=weights
    )
    plain = FocalLoss(2.0, None)
    for cls in range(5):
        target = torch.full((8,), cls)
        expected = alpha[cls] * weights[cls] * plain(logits, target)
        torch.testing.assert_close(loss(logits, target), expected)


def test_build_loss_multilabel_focal_keeps_alpha_split_and_scales_labels() -> None:
    logits = _logits(8, 5, seed=16)
    alpha, weights = [0.25] * 5, torch.tensor([1.0, 4.0, 0.5, 2.0, 3.0])
    loss = build_loss(
        "multilabel", "focal", NAMES, gamma=2.0, alpha=alpha, label_smoothing=0, weights=weights
    )
    plain = BinaryFocalLoss(2.0, None)
    for target, factor in ((torch.ones(8, 5), 0.25), (torch.zeros(8, 5), 0.75)):
        # The mean over B * L entries is the mean over labels of each label's batch mean.
        per_label = [plain(logits[:, [c]], target[:, [c]]) for c in range(5)]
        expected = sum(factor * weights[c] * per_label[c] for c in range(5)) / 5
        torch.testing.assert_close(loss(logits, target), expected)
