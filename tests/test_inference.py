"""Scores from a model and uint8 images, with and without test-time flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.inference import normalise, predict_scores

CPU = torch.device("cpu")


class HalfMeans(nn.Module):
    """Logits (B, 4): mean of the left, right, top and bottom half of the first channel."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        plane = images[:, 0]  # (B, H, W)
        h, w = plane.shape[1] // 2, plane.shape[2] // 2
        halves = [plane[:, :, :w], plane[:, :, w:], plane[:, :h], plane[:, h:]]
        return torch.stack([half.mean(dim=(1, 2)) for half in halves], dim=1)


def _images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 8, 8), dtype=torch.uint8, generator=generator)


def _softmax(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(normalise(images, CPU)).softmax(dim=1).numpy()


def test_without_tta_the_scores_are_the_models_softmax() -> None:
    images = _images(5, seed=1)
    scores = predict_scores(HalfMeans(), images, (2, CPU), "multiclass", "none")
    np.testing.assert_allclose(scores, _softmax(HalfMeans(), images), atol=1e-6)


@pytest.mark.parametrize("tta", ["hflip", "vflip", "flips"])
def test_flipped_views_average_the_scores_of_both_halves(tta: str) -> None:
    images = _images(5, seed=2)
    scores = predict_scores(HalfMeans(), images, (2, CPU), "multiclass", tta)  # type: ignore[arg-type]
    plain = _softmax(HalfMeans(), images)
    assert not np.allclose(plain[:, 0], plain[:, 1]) and not np.allclose(plain[:, 2], plain[:, 3])
    # a left-right flip swaps the left and right means, so their averaged scores agree
    is_left_right = tta in ("hflip", "flips")
    is_up_down = tta in ("vflip", "flips")
    assert np.allclose(scores[:, 0], scores[:, 1], atol=1e-6) == is_left_right
    assert np.allclose(scores[:, 2], scores[:, 3], atol=1e-6) == is_up_down
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)  # still probabilities


def test_flips_is_the_mean_over_the_four_flipped_copies() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    images = _images(4, seed=3)
    copies = [images, images.flip(3), images.flip(2), images.flip(2).flip(3)]
    expected = np.mean([_softmax(model, copy) for copy in copies], axis=0)
    scores = predict_scores(model, images, (3, CPU), "multiclass", "flips")
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    sigmoid = predict_scores(model, images, (3, CPU), "multilabel", "flips")
    with torch.no_grad():
        hand = [model(normalise(copy, CPU)).sigmoid().numpy() for copy in copies]
    np.testing.assert_allclose(sigmoid, np.mean(hand, axis=0), atol=1e-6)
