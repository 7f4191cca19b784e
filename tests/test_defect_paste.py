"""Tests of pipeline.defect_paste: defects cut from one image of a batch and pasted into good ones.

Generated batches hold random pixels, so a pasted box is told apart by its pixels: inside it
they are the source box's, all shifted by one amount per channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pipeline.defect_paste import MARGIN_MIN, MARGIN_SHARE, PastedBatch, paste_defects

seeds = st.integers(0, 2**32 - 1)


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # (B, C, H, W) uint8 or float in 0..255
    targets: torch.Tensor  # (B,) int64 or (B, K) float multi-hot
    boxes: list[torch.Tensor]  # float32 (n_i, 4)
    labels: list[torch.Tensor]  # int64 (n_i,)
    good_index: int | None

    def paste(self, share: float, seed: int) -> PastedBatch:
        generator = torch.Generator().manual_seed(seed)
        return paste_defects(
            self.images, self.targets, self.boxes, self.labels, self.good_index, share, generator
        )

    def is_good(self, i: int) -> bool:
        if self.good_index is None:
            return not bool(self.targets[i].any())
        return int(self.targets[i]) == self.good_index


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    """2-6 random images (uint8 or float), multiclass or multilabel, defective images with
    0-2 boxes each (some of zero area: pushed out of view)."""
    count, height, width = (
        draw(st.integers(2, 6)),
        draw(st.integers(6, 40)),
        draw(st.integers(6, 40)),
    )
    n_outputs, multilabel = draw(st.integers(2, 4)), draw(st.booleans())
    noise = torch.Generator().manual_seed(draw(seeds))
    images = torch.rand((count, 3, height, width), generator=noise) * 255
    if draw(st.booleans()):
        images = images.round().to(torch.uint8)
    good = None if multilabel else draw(st.integers(0, n_outputs - 1))
    rows: list[Any] = []
    boxes, labels = [], []
    for _ in range(count):
        defects = draw(
            st.lists(st.integers(0, n_outputs - 1), max_size=1 if good is not None else 2)
        )
        defects = [d for d in defects if d != good]
        found = []
        for label in defects:
            for _ in range(draw(st.integers(0, 2))):
                x0, y0 = draw(st.floats(0, width - 1)), draw(st.floats(0, height - 1))
                x1, y1 = draw(st.floats(x0, width)), draw(st.floats(y0, height))
                found.append(([x0, y0, x1, y1], label))
        boxes.append(torch.tensor([b for b, _ in found], dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor([label for _, label in found], dtype=torch.int64))
        if good is None:
            rows.append([1.0 if k in defects else 0.0 for k in range(n_outputs)])
        else:
            rows.append(defects[0] if defects else good)
    targets = torch.tensor(rows) if good is not None else torch.tensor(rows, dtype=torch.float32)
    return Batch(images, targets, boxes, labels, good)


def pasted_rows(batch: Batch, out: PastedBatch) -> list[int]:
    return [i for i in range(len(batch.images)) if len(out.boxes[i]) == len(batch.boxes[i]) + 1]


def cut_of(box: torch.Tensor, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns that a paste landing at `box` may have changed (box and margin)."""
    x0, y0, x1, y1 = box.tolist()
    margin = max(MARGIN_MIN, MARGIN_SHARE * max(x1 - x0, y1 - y0)) + 1
    return (
        slice(max(0, int(y0 - margin)), min(height, int(y1 + margin) + 1)),
        slice(max(0, int(x0 - margin)), min(width, int(x1 + margin) + 1)),
    )


@given(batches(), st.floats(0.0, 1.0), seeds)
def test_only_good_images_change_and_each_gets_one_real_defect(
    batch: Batch, share: float, seed: int
) -> None:
    before = [t.clone() for t in (batch.images, batch.targets)]
    out = batch.paste(share, seed)
    assert torch.equal(batch.images, before[0]) and torch.equal(batch.targets, before[1])
    assert out.images.dtype == batch.images.dtype and out.images.shape == batch.images.shape
    assert out.targets.dtype == batch.targets.dtype
    height, width = batch.images.shape[2:]
    pasted = pasted_rows(batch, out)
    for i in range(len(batch.images)):
        if i not in pasted:
            assert torch.equal(out.images[i], batch.images[i])
            assert torch.equal(out.targets[i], batch.targets[i])
            assert torch.equal(out.boxes[i], batch.boxes[i])
            continue
        assert batch.is_good(i)
        new, label = out.boxes[i][-1], int(out.box_labels[i][-1])
        assert 0 <= new[0] <= new[2] <= width and 0 <= new[1] <= new[3] <= height
        # the pasted box is a box of positive area of another image, with its label
        sizes = [
            (j, k)
            for j in range(len(batch.images))
            for k in range(len(batch.boxes[j]))
            if j != i
            and int(batch.labels[j][k]) == label
            # float32 at canvas scale: sizes agree to well within a pixel's 1e-4
            and torch.allclose(
                batch.boxes[j][k][2:] - batch.boxes[j][k][:2], new[2:] - new[:2], atol=1e-4
            )
            and bool((batch.boxes[j][k][2:] > batch.boxes[j][k][:2]).all())
        ]
        assert sizes
        if batch.good_index is None:
            expected = batch.targets[i].clone()
            expected[label] = 1
            assert torch.equal(out.targets[i], expected)
        else:
            assert int(out.targets[i]) == label
        # outside the box and its margin nothing moved
        rows, columns = cut_of(new, height, width)
        outside = torch.ones((height, width), dtype=torch.bool)
        outside[rows, columns] = False
        assert torch.equal(out.images[i][:, outside], batch.images[i][:, outside])


@given(batches(), st.floats(0.0, 1.0), seeds)
def test_the_same_seed_gives_the_same_batch(batch: Batch, share: float, seed: int) -> None:
    first, second = batch.paste(share, seed), batch.paste(share, seed)
    assert torch.equal(first.images, second.images) and torch.equal(first.targets, second.targets)
    assert all(torch.equal(a, b) for a, b in zip(first.boxes, second.boxes, strict=True))


@given(batches(), seeds)
def test_share_one_pastes_into_every_good_image_that_has_a_source(batch: Batch, seed: int) -> None:
    out = batch.paste(1.0, seed)
    has_box = [bool(((b[:, 2:] > b[:, :2]).all(dim=1)).any()) for b in batch.boxes]
    for i in range(len(batch.images)):
        source = any(has_box[j] for j in range(len(batch.images)) if j != i)
        assert (i in pasted_rows(batch, out)) == (batch.is_good(i) and source)


@given(batches(), seeds)
def test_share_zero_returns_copies(batch: Batch, seed: int) -> None:
    out = batch.paste(0.0, seed)
    assert torch.equal(out.images, batch.images) and torch.equal(out.targets, batch.targets)
    assert out.images.data_ptr() != batch.images.data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(out.boxes, batch.boxes, strict=True))


def flat_pair(receiver: float, source: float, dot: float | None) -> Batch:
    """Image 0 good and flat; image 1 flat with one defect box (a dark dot inside when `dot`
    is given) in the middle of a 48 x 48 canvas."""
    images = torch.tensor([receiver, source]).view(2, 1, 1, 1).expand(2, 3, 48, 48).clone()
    if dot is not None:
        images[1, :, 22:26, 22:26] = dot
    box = torch.tensor([[20.0, 20.0, 28.0, 28.0]])
    return Batch(images, torch.tensor([0, 1]), [torch.zeros((0, 4)), box], [
        torch.zeros(0, dtype=torch.int64), torch.tensor([1])
    ], 0)  # fmt: skip


@pytest.mark.parametrize("source", [40.0, 120.0, 230.0])
def test_a_defect_free_patch_leaves_no_trace_whatever_its_brightness(source: float) -> None:
    out = flat_pair(receiver=150.0, source=source, dot=None).paste(1.0, 3)
    assert len(out.boxes[0]) == 1 and int(out.targets[0]) == 1
    assert torch.allclose(out.images[0], torch.full_like(out.images[0], 150.0))


def test_a_pasted_defect_keeps_its_contrast_on_the_receiver() -> None:
    batch = flat_pair(receiver=180.0, source=100.0, dot=40.0)
    out = batch.paste(1.0, 5)
    x0, y0, x1, y1 = (int(v) for v in out.boxes[0][0].tolist())
    box = out.images[0, 0, y0:y1, x0:x1]  # (8, 8): the source's box moved here
    source_box = batch.images[1, 0, 20:28, 20:28]
    # inside the box, every pixel is the source's plus one shift, which brings the defect's
    # surface to the receiver's level: the dot stays 60 darker than what surrounds it
    assert torch.allclose(box - source_box, torch.full_like(box, 80.0))
    assert box[3, 3] == 120.0 and box[0, 0] == 180.0
    assert int((out.images[0] != 180.0).sum()) == 3 * 16  # the dot, on each channel


def test_boxes_out_of_view_are_never_pasted() -> None:
    batch = flat_pair(receiver=150.0, source=90.0, dot=10.0)
    empty = Batch(batch.images, batch.targets, [batch.boxes[0], torch.tensor([[48.0, 5, 48, 9]])],
                  batch.labels, 0)  # fmt: skip
    out = empty.paste(1.0, 1)
    assert torch.equal(out.images, batch.images) and out.targets.tolist() == [0, 1]


def test_a_batch_of_mismatched_lengths_is_an_error() -> None:
    batch = flat_pair(receiver=150.0, source=90.0, dot=10.0)
    with pytest.raises(ValueError, match="one target, boxes and box_labels entry each"):
        paste_defects(batch.images, batch.targets[:1], batch.boxes, batch.labels, 0, 1.0,
                      torch.Generator().manual_seed(0))  # fmt: skip
