"""Class-imbalance sampling: per-sample weights, hard upsampling, seeded and sharded epochs.

Every draw comes from a torch.Generator derived from (seed, epoch), never from a global RNG. Every
rank draws the same epoch order and keeps its own slice of it, so the shards are disjoint and
together they are the single-process epoch, whatever the world size.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from pipeline.errors import ApexLoopError

WEIGHT_MODES = ("inv", "sqrt", "effective_num")
# Keeps (seed, epoch) pairs apart for any epoch count below the stride (a prime).
_SEED_STRIDE = 1_000_003
# torch.multinomial draws from at most 2**24 categories.
_MAX_CATEGORIES = 2**24


class SamplerConfigError(ApexLoopError):
    """Bad sampler settings or labels; the message names the params key or the sample."""


def _class_counts(labels: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """Samples per class; a multilabel sample counts once for each distinct class it has."""
    if n_classes < 1:
        raise SamplerConfigError(f"n_classes is {n_classes}; pass the task's number of classes")
    if len(labels) == 0:
        raise SamplerConfigError("no samples to weight; the training split is empty")
    counts = np.zeros(n_classes, dtype=np.int64)
    for row, classes in enumerate(labels):
        if len(classes) == 0:
            raise SamplerConfigError(
                f"sample {row} has no class; pass the good class index for a multilabel "
                "sample without defects"
            )
        for cls in set(classes):
            if not 0 <= cls < n_classes:
                raise SamplerConfigError(
                    f"sample {row} has class index {cls}, outside 0..{n_classes - 1}; "
                    "check its labels against the task's class list"
                )
            counts[cls] += 1
    return counts


def _rarest_class(classes: Sequence[int], counts: np.ndarray) -> int:
    """The sample's class with the fewest samples (ties: the lowest index)."""
    return min(set(classes), key=lambda cls: (counts[cls], cls))


def _check_weighting(mode: str, beta: float) -> None:
    if mode not in WEIGHT_MODES:
        raise SamplerConfigError(
            f"train.sampler_mode is {mode!r}; use one of {', '.join(WEIGHT_MODES)}"
        )
    if not 0.0 <= beta < 1.0:  # also rejects NaN
        raise SamplerConfigError(
            f"train.sampler_beta is {beta}; use a value in [0, 1) (Cui et al. use 0.9 to "
            "0.9999; values near 1 approach mode 'inv')"
        )


def _class_weights(counts: np.ndarray, mode: str, beta: float) -> np.ndarray:
    """Weight per class, decreasing in its count; 0 for a class with no samples."""
    weights = np.zeros(len(counts), dtype=np.float64)
    present = counts > 0
    n = counts[present].astype(np.float64)
    if mode == "inv":
        weights[present] = 1.0 / n
    elif mode == "sqrt":
        weights[present] = 1.0 / np.sqrt(n)
    elif beta == 0.0:
        weights[present] = 1.0  # (1 - 0) / (1 - 0**n)
    else:
        # 1 / effective number (1 - beta**n) / (1 - beta); expm1 keeps precision near beta = 1
        weights[present] = (1.0 - beta) / -np.expm1(n * np.log(beta))
    return weights


def sample_weights(
    labels: Sequence[Sequence[int]], n_classes: int, mode: str, beta: float
) -> np.ndarray:
    """Per-sample draw weights that counter class imbalance; they sum to 1.

    labels[i] holds sample i's class indices (multiclass: one; multilabel: its defects, or the good
    class when it has none). Class weight by mode: "inv" 1/n_c, "sqrt" 1/sqrt(n_c),
    "effective_num" (1 - beta)/(1 - beta**n_c) (Cui et al. 2019). A sample takes the weight of
    its rarest class (the largest class weight). Under "inv" each multiclass class gets an equal
    share of the draws.
    """
    _check_weighting(mode, beta)
    counts = _class_counts(labels, n_classes)
    per_class = _class_weights(counts, mode, beta)
    weights = np.array([max(per_class[cls] for cls in classes) for classes in labels])
    return weights / weights.sum()


def _check_upsampling(target_ratio: float, max_replications: int) -> None:
    if not 0.0 < target_ratio <= 1.0:  # also rejects NaN
        raise SamplerConfigError(
            f"train.upsample_target_ratio is {target_ratio}; use a value in (0, 1] "
            "(1 lifts every class to the largest class's count)"
        )
    if max_replications < 1:
        raise SamplerConfigError(
            f"train.upsample_max_replications is {max_replications}; use an integer >= 1 "
            "(1 turns upsampling off)"
        )


def _spread(n_members: int, total: int, cap: int) -> np.ndarray:
    """Copies per member summing to total: whole copies, the remainder to the first in index
    order, each capped at cap (the cap binds on all members or on none)."""
    whole, remainder = divmod(total, n_members)
    copies = np.full(n_members, whole, dtype=np.int64)
    copies[:remainder] += 1
    return np.minimum(copies, cap)


def upsample_indices(
    labels: Sequence[Sequence[int]], n_classes: int, target_ratio: float, max_replications: int
) -> np.ndarray:
    """Sorted sample indices with rare classes repeated; deterministic, no randomness.

    The target is ceil(target_ratio * largest class count). Each sample belongs to its rarest
    class; classes are lifted rarest first, each by repeating its own samples until its count
    (copies made for rarer classes included) reaches the target. Every index appears at least
    once and at most max_replications times. A multilabel class that is no sample's rarest class
    rises only through its samples' rarer classes.
    """
    _check_upsampling(target_ratio, max_replications)
    counts = _class_counts(labels, n_classes)
    # round() first: (9 / 14) * 42 is 27.000000000000004 in floats, and the target is 27
    target = math.ceil(round(target_ratio * int(counts.max()), 9))
    rarest = np.array([_rarest_class(classes, counts) for classes in labels])
    copies = np.ones(len(labels), dtype=np.int64)
    running = counts.copy()
    for cls in sorted(range(n_classes), key=lambda c: (counts[c], c)):
        members = np.flatnonzero(rarest == cls)
        deficit = target - int(running[cls])
        if deficit <= 0 or len(members) == 0:
            continue
        extra = _spread(len(members), len(members) + deficit, max_replications) - 1
        copies[members] += extra
        for index, added in zip(members.tolist(), extra.tolist(), strict=True):
            running[list(set(labels[index]))] += added
    return np.repeat(np.arange(len(labels), dtype=np.int64), copies)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A fresh generator for one epoch: the same (seed, epoch) always gives the same stream."""
    return torch.Generator().manual_seed((seed * _SEED_STRIDE + epoch) % 2**64)


class _EpochSampler(Sampler[int], ABC):
    """Draws a whole epoch from (seed, epoch), the same on every rank, and yields rank's shard.

    The draw is padded by wrapping to a multiple of world_size; rank r yields positions
    r, r + world_size, ... of it, so every rank yields len(self) indices.
    """

    def __init__(self, size: int, seed: int, rank: int, world_size: int) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise SamplerConfigError(
                f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size}); pass "
                "this process's rank and the number of training processes"
            )
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch's order from the next iteration on (call it before every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)

    @abstractmethod
    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        """One epoch's indices, before padding and sharding (size,)."""

    def __iter__(self) -> Iterator[int]:
        draw = self._draw(epoch_generator(self.seed, self.epoch))  # (size,)
        total = len(self) * self.world_size
        padded = draw.repeat(math.ceil(total / len(draw)))[:total]  # (total,)
        return iter(padded[self.rank :: self.world_size].tolist())


def _checked_weights(weights: np.ndarray) -> torch.Tensor:
    """A float64 copy of weights, which must be 1-D, finite, non-negative, with positive sum."""
    values = np.array(weights, dtype=np.float64)  # a copy: the caller's array is never touched
    if values.ndim != 1 or not 1 <= len(values) <= _MAX_CATEGORIES:
        raise SamplerConfigError(
            f"sampler weights have shape {values.shape}; pass one weight per training sample "
            f"(at most {_MAX_CATEGORIES}), e.g. from sample_weights"
        )
    if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise SamplerConfigError(
            "sampler weights must be finite and non-negative with a positive sum; "
            "build them with sample_weights"
        )
    return torch.from_numpy(values)


class WeightedEpochSampler(_EpochSampler):
    """num_samples indices drawn with replacement, index i with probability weights[i] / sum."""

    def __init__(
        self, weights: np.ndarray, num_samples: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.weights = _checked_weights(weights)
        if num_samples < 1:
            raise SamplerConfigError(
                f"num_samples is {num_samples}; pass the epoch length (>= 1), usually the "
                "number of training samples"
            )
        super().__init__(num_samples, seed, rank, world_size)

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)


class ShuffleEpochSampler(_EpochSampler):
    """A permutation of range(n) per epoch (the `none` sampler: no reweighting)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise SamplerConfigError(f"n is {n}; the training split has no samples to shuffle")
        super().__init__(n, seed, rank, world_size)

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.size, generator=generator)
