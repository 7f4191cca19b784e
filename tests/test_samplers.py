"""Tests of pipeline.samplers: class weights, hard upsampling, seeded and sharded epoch samplers."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.errors import ApexLoopError
from pipeline.samplers import (
    WEIGHT_MODES,
    SamplerConfigError,
    ShuffleEpochSampler,
    WeightedEpochSampler,
    sample_weights,
    upsample_indices,
)

Labels = list[list[int]]

seeds = st.integers(min_value=0, max_value=2**32 - 1)
epochs = st.integers(min_value=0, max_value=10_000)
kinds = st.sampled_from(["weighted", "shuffle"])
betas = st.floats(min_value=0.0, max_value=0.9999)


@st.composite
def multiclass_labels(draw: st.DrawFn) -> tuple[Labels, int]:
    n_classes = draw(st.integers(min_value=1, max_value=6))
    rows = draw(st.lists(st.integers(0, n_classes - 1), min_size=1, max_size=80))
    return [[cls] for cls in rows], n_classes


@st.composite
def multilabel_labels(draw: st.DrawFn) -> tuple[Labels, int]:
    n_classes = draw(st.integers(min_value=2, max_value=6))
    label_sets = st.lists(st.integers(0, n_classes - 1), min_size=1, max_size=3, unique=True)
    return draw(st.lists(label_sets, min_size=1, max_size=60)), n_classes


def make_sampler(
    kind: str, size: int, seed: int, rank: int = 0, world_size: int = 1
) -> WeightedEpochSampler | ShuffleEpochSampler:
    """A weighted sampler over `size` unequal weights, or a shuffle of range(size)."""
    if kind == "weighted":
        weights = np.arange(1, size + 1, dtype=np.float64)
        return WeightedEpochSampler(weights, size, seed, rank, world_size)
    return ShuffleEpochSampler(size, seed, rank, world_size)


def epoch_order(sampler: WeightedEpochSampler | ShuffleEpochSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def class_counts(labels: Labels, n_classes: int) -> np.ndarray:
    """Oracle: samples per class, a multilabel sample counting once per distinct class."""
    return np.array([sum(cls in set(row) for row in labels) for cls in range(n_classes)])


# ---- epoch samplers --------------------------------------------------------------------------


@given(kinds, st.integers(1, 200), seeds, epochs, st.integers(1, 8), st.data())
def test_same_seed_and_epoch_give_the_same_order(
    kind: str, size: int, seed: int, epoch: int, world_size: int, data: st.DataObject
) -> None:
    rank = data.draw(st.integers(0, world_size - 1))
    first = make_sampler(kind, size, seed, rank, world_size)
    second = make_sampler(kind, size, seed, rank, world_size)
    assert epoch_order(first, epoch) == epoch_order(second, epoch)
    assert epoch_order(first, epoch) == list(first)  # iterating again repeats the epoch


@given(kinds, seeds, epochs, epochs)
def test_other_epochs_and_seeds_give_other_orders(
    kind: str, seed: int, epoch: int, other_epoch: int
) -> None:
    # 100 positions: two independent orders coincide with probability < 100**-50, never in practice
    sampler = make_sampler(kind, 100, seed)
    if epoch != other_epoch:
        assert epoch_order(sampler, epoch) != epoch_order(sampler, other_epoch)
    assert epoch_order(sampler, epoch) != epoch_order(make_sampler(kind, 100, seed + 1), epoch)


@given(kinds, st.integers(1, 200), seeds, st.integers(1, 8), st.lists(epochs, max_size=4))
def test_epoch_length_is_fixed(
    kind: str, size: int, seed: int, world_size: int, epoch_list: list[int]
) -> None:
    expected = math.ceil(size / world_size)
    for rank in range(world_size):
        sampler = make_sampler(kind, size, seed, rank, world_size)
        assert len(sampler) == expected
        for epoch in epoch_list:
            assert len(epoch_order(sampler, epoch)) == expected


@given(kinds, st.integers(1, 120), seeds, epochs, st.integers(1, 8))
def test_rank_shards_interleave_back_to_the_single_process_draw(
    kind: str, size: int, seed: int, epoch: int, world_size: int
) -> None:
    single = epoch_order(make_sampler(kind, size, seed), epoch)
    shards = [
        epoch_order(make_sampler(kind, size, seed, rank, world_size), epoch)
        for rank in range(world_size)
    ]
    per_rank = len(shards[0])
    assert all(len(shard) == per_rank for shard in shards)
    # position p of the padded epoch belongs to rank p % world_size alone
    interleaved = [shards[p % world_size][p // world_size] for p in range(per_rank * world_size)]
    assert interleaved[:size] == single
    # padding wraps around to the start of the draw
    assert interleaved[size:] == (single * world_size)[: len(interleaved) - size]


@given(st.integers(1, 120), seeds, epochs, st.integers(1, 8))
def test_shuffle_shards_cover_every_index_once_up_to_padding(
    size: int, seed: int, epoch: int, world_size: int
) -> None:
    shards = [
        epoch_order(ShuffleEpochSampler(size, seed, rank, world_size), epoch)
        for rank in range(world_size)
    ]
    seen = Counter(index for shard in shards for index in shard)
    assert set(seen) == set(range(size))
    padding = math.ceil(size / world_size) * world_size - size
    assert sum(seen.values()) - size == padding
    if padding == 0:
        assert all(count == 1 for count in seen.values())


@given(
    st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=1, max_size=50).filter(any),
    st.integers(1, 300),
    seeds,
)
def test_zero_weight_samples_are_never_drawn(
    weights: list[float], num_samples: int, seed: int
) -> None:
    drawn = list(WeightedEpochSampler(np.array(weights), num_samples, seed))
    assert len(drawn) == num_samples
    assert all(weights[index] > 0 for index in drawn)


# Labels for the long draw: 1000 samples, classes 0..3 with 600/250/100/50 samples (multiclass);
# the multilabel set adds class 3 to every 10th sample of class 0, so rows mix classes.
MULTICLASS_LONG: Labels = [[0]] * 600 + [[1]] * 250 + [[2]] * 100 + [[3]] * 50
MULTILABEL_LONG: Labels = [[0, 3] if i % 10 == 0 else [0] for i in range(600)] + MULTICLASS_LONG[
    600:
]
LONG_DRAW = 100_000


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(WEIGHT_MODES), st.sampled_from([MULTICLASS_LONG, MULTILABEL_LONG]), seeds)
@example("inv", MULTICLASS_LONG, 0)
def test_long_weighted_draw_matches_the_expected_class_shares(
    mode: str, labels: Labels, seed: int
) -> None:
    weights = sample_weights(labels, 4, mode, beta=0.99)
    drawn = np.array(list(WeightedEpochSampler(weights, LONG_DRAW, seed)))
    for cls in range(4):
        has_class = np.array([cls in row for row in labels])
        expected = weights[has_class].sum()  # exact probability that a draw has class cls
        observed = has_class[drawn].mean()
        # The count of draws with class cls is Binomial(LONG_DRAW, expected). Seven standard
        # deviations put a false failure below 1e-11 per class and seed (normal tail), so the
        # test cannot flake over any seed, while a sampler ignoring the weights misses by > 0.1.
        tolerance = 7 * math.sqrt(expected * (1 - expected) / LONG_DRAW)
        assert abs(observed - expected) <= tolerance, (cls, observed, expected)


def test_samplers_leave_global_rngs_and_their_inputs_alone() -> None:
    weights = np.array([1.0, 0.0, 2.0, 5.0])
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    list(WeightedEpochSampler(weights, 50, seed=3))
    list(ShuffleEpochSampler(50, seed=3))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    assert weights.tolist() == [1.0, 0.0, 2.0, 5.0]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((np.ones(4), 4, 0, 4, 4), "rank 4"),
        ((np.ones(4), 4, 0, 0, 0), "world_size 0"),
        ((np.ones(4), 0, 0), "num_samples is 0"),
        ((np.array([1.0, -1.0]), 4, 0), "non-negative"),
        ((np.zeros(3), 4, 0), "positive sum"),
        ((np.array([1.0, np.nan]), 4, 0), "finite"),
        ((np.ones((2, 2)), 4, 0), "one weight per training sample"),
        ((np.ones(0), 4, 0), "one weight per training sample"),
    ],
)
def test_weighted_sampler_rejects_bad_settings(arguments: tuple, message: str) -> None:
    with pytest.raises(SamplerConfigError, match=message):
        WeightedEpochSampler(*arguments)


def test_shuffle_sampler_rejects_bad_settings() -> None:
    with pytest.raises(SamplerConfigError, match="n is 0"):
        ShuffleEpochSampler(0, seed=0)
    with pytest.raises(SamplerConfigError, match="rank -1"):
        ShuffleEpochSampler(5, seed=0, rank=-1)


# ---- sample weights --------------------------------------------------------------------------


@given(multiclass_labels(), st.sampled_from(WEIGHT_MODES), betas)
def test_weights_are_positive_and_sum_to_one(
    case: tuple[Labels, int], mode: str, beta: float
) -> None:
    labels, n_classes = case
    weights = sample_weights(labels, n_classes, mode, beta)
    assert weights.shape == (len(labels),)
    assert (weights > 0).all()
    assert weights.sum() == pytest.approx(1.0)


@given(multiclass_labels())
def test_inv_mode_gives_every_present_class_an_equal_share(case: tuple[Labels, int]) -> None:
    labels, n_classes = case
    weights = sample_weights(labels, n_classes, "inv", beta=0.9)
    classes = np.array([row[0] for row in labels])
    present = sorted(set(classes.tolist()))
    shares = [weights[classes == cls].sum() for cls in present]
    assert shares == pytest.approx([1 / len(present)] * len(present))


@given(multiclass_labels())
def test_sqrt_mode_gives_shares_proportional_to_the_root_of_the_count(
    case: tuple[Labels, int],
) -> None:
    labels, n_classes = case
    weights = sample_weights(labels, n_classes, "sqrt", beta=0.9)
    classes = np.array([row[0] for row in labels])
    counts = class_counts(labels, n_classes)
    present = counts > 0
    shares = np.array([weights[classes == cls].sum() for cls in range(n_classes)])
    expected = np.sqrt(counts[present]) / np.sqrt(counts[present]).sum()
    assert shares[present] == pytest.approx(expected)


def class_weight(count: int, mode: str, beta: float) -> float:
    """Oracle: the class weight formulas as the papers write them."""
    if mode == "inv":
        return 1 / count
    if mode == "sqrt":
        return 1 / math.sqrt(count)
    return (1 - beta) / (1 - beta**count)


@given(multilabel_labels(), st.sampled_from(WEIGHT_MODES), betas)
def test_a_multilabel_sample_takes_its_rarest_class_weight(
    case: tuple[Labels, int], mode: str, beta: float
) -> None:
    labels, n_classes = case
    counts = class_counts(labels, n_classes)
    raw = np.array([max(class_weight(counts[c], mode, beta) for c in row) for row in labels])
    weights = sample_weights(labels, n_classes, mode, beta)
    assert weights == pytest.approx(raw / raw.sum(), rel=1e-6)


@given(st.one_of(multiclass_labels(), multilabel_labels()))
def test_effective_num_spans_uniform_to_inv(case: tuple[Labels, int]) -> None:
    labels, n_classes = case
    uniform = sample_weights(labels, n_classes, "effective_num", beta=0.0)
    assert uniform == pytest.approx(np.full(len(labels), 1 / len(labels)))
    inv = sample_weights(labels, n_classes, "inv", beta=0.0)
    # (1 - beta)/(1 - beta**n) = 1/n * (1 + (n - 1)(1 - beta)/2 + ...): 1e-9 off for n <= 80
    near_inv = sample_weights(labels, n_classes, "effective_num", beta=1 - 1e-9)
    assert near_inv == pytest.approx(inv, rel=1e-6)


def test_weights_do_not_mutate_labels() -> None:
    labels = [[2, 0], [1], [1]]
    sample_weights(labels, 3, "inv", 0.9)
    upsample_indices(labels, 3, 1.0, 5)
    assert labels == [[2, 0], [1], [1]]


@pytest.mark.parametrize(
    ("mode", "beta", "key"),
    [
        ("balanced", 0.9, "train.sampler_mode"),
        ("inv", 1.0, "train.sampler_beta"),
        ("effective_num", -0.1, "train.sampler_beta"),
        ("effective_num", float("nan"), "train.sampler_beta"),
    ],
)
def test_bad_weighting_settings_name_their_params_key(mode: str, beta: float, key: str) -> None:
    with pytest.raises(ApexLoopError, match=key):
        sample_weights([[0], [1]], 2, mode, beta)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([[0], [2]], "sample 1 has class index 2"),
        ([[0], [-1]], "sample 1 has class index -1"),
        ([[], [1]], "sample 0 has no class"),
        ([], "empty"),
    ],
)
def test_bad_labels_name_the_sample(labels: Labels, message: str) -> None:
    with pytest.raises(SamplerConfigError, match=message):
        sample_weights(labels, 2, "inv", 0.9)
    with pytest.raises(SamplerConfigError, match=message):
        upsample_indices(labels, 2, 1.0, 3)


# ---- upsampling ------------------------------------------------------------------------------

ratios = st.tuples(st.integers(1, 20), st.integers(1, 20)).filter(lambda pq: pq[0] <= pq[1])


def check_index_list(indices: np.ndarray, n_samples: int, max_replications: int) -> Counter:
    """Sorted, every original index kept, none past the cap; returns copies per index."""
    assert indices.tolist() == sorted(indices.tolist())
    copies = Counter(indices.tolist())
    assert set(copies) == set(range(n_samples))
    assert max(copies.values()) <= max_replications
    return copies


def upsampled(
    labels: Labels, n_classes: int, ratio: tuple[int, int], max_replications: int
) -> tuple[np.ndarray, Counter[int], np.ndarray, int]:
    """upsample_indices at ratio[0] / ratio[1], checked; its copies per index, the class counts
    and the exact integer target ceil(ratio * largest count)."""
    indices = upsample_indices(labels, n_classes, ratio[0] / ratio[1], max_replications)
    copies = check_index_list(indices, len(labels), max_replications)
    counts = class_counts(labels, n_classes)
    return indices, copies, counts, -(-ratio[0] * int(counts.max()) // ratio[1])


@given(multiclass_labels(), ratios, st.integers(1, 6))
@example(([[0]] * 42 + [[1]] * 2, 2), (9, 14), 20)  # (9 / 14) * 42 = 27.000000000000004
def test_multiclass_upsampling_lifts_each_class_to_the_capped_target(
    case: tuple[Labels, int], ratio: tuple[int, int], max_replications: int
) -> None:
    labels, n_classes = case
    _, copies, counts, target = upsampled(labels, n_classes, ratio, max_replications)
    for cls in range(n_classes):
        members = [i for i, row in enumerate(labels) if row[0] == cls]
        per_member = [copies[i] for i in members]
        if counts[cls] >= target:
            assert all(count == 1 for count in per_member)
        else:
            assert sum(per_member) == min(target, counts[cls] * max_replications)
            # whole copies, then the remainder to the earliest indices
            assert per_member == sorted(per_member, reverse=True)
            assert not per_member or max(per_member) - min(per_member) <= 1


@given(multilabel_labels(), ratios, st.integers(1, 6))
def test_multilabel_upsampling_replicates_by_the_rarest_class(
    case: tuple[Labels, int], ratio: tuple[int, int], max_replications: int
) -> None:
    labels, n_classes = case
    indices, copies, counts, target = upsampled(labels, n_classes, ratio, max_replications)
    rarest = [min(set(row), key=lambda c: (counts[c], c)) for row in labels]
    final = class_counts([labels[i] for i in indices.tolist()], n_classes)
    for cls in range(n_classes):
        members = [i for i, r in enumerate(rarest) if r == cls]
        if counts[cls] >= target:
            assert all(copies[i] == 1 for i in members)
        # short of the target only where none of its own samples may be copied again
        assert final[cls] >= target or all(copies[i] == max_replications for i in members)


@given(st.one_of(multiclass_labels(), multilabel_labels()), ratios)
def test_one_replication_or_a_balanced_set_keeps_the_identity(
    case: tuple[Labels, int], ratio: tuple[int, int]
) -> None:
    labels, n_classes = case
    identity = list(range(len(labels)))
    assert upsample_indices(labels, n_classes, ratio[0] / ratio[1], 1).tolist() == identity
    balanced = [[i % 3] for i in range(12)]
    assert upsample_indices(balanced, 3, ratio[0] / ratio[1], 5).tolist() == list(range(12))


@pytest.mark.parametrize(
    ("ratio", "max_replications", "key"),
    [
        (0.0, 3, "train.upsample_target_ratio"),
        (1.5, 3, "train.upsample_target_ratio"),
        (float("nan"), 3, "train.upsample_target_ratio"),
        (0.5, 0, "train.upsample_max_replications"),
    ],
)
def test_bad_upsampling_settings_name_their_params_key(
    ratio: float, max_replications: int, key: str
) -> None:
    with pytest.raises(ApexLoopError, match=key):
        upsample_indices([[0], [1]], 2, ratio, max_replications)
