"""Tests of pipeline.mixing: MixUp, CutMix and defect-aware CutMix on generated and crafted data.

Every image of a generated batch is one distinct constant (image i holds i + 1), so a pasted
rectangle is exactly the set of pixels that differ from the input, and its value names the
partner it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from conftest import REPO
from hypothesis import given
from hypothesis import strategies as st

from pipeline.mixing import MixConfig, MixedBatch, MixError, mix_batch, soft_targets
from pipeline.params import TrainParams, load_section

MODES = ("mixup", "cutmix", "defect_cutmix")
CUT_MODES = ("cutmix", "defect_cutmix")

Box = tuple[int, int, int, int, int]  # x0, y0, x1, y1 (pixels, x1/y1 exclusive), output index


@dataclass(frozen=True)
class Batch:
    """A generated batch with its defects kept as plain Python for the test oracles."""

    task: str
    good_index: int | None
    labels: list[set[int]]  # per image: its defect output indices (empty: good)
    boxes: list[list[Box]]
    images: torch.Tensor  # float32 (B, C, H, W), image i filled with i + 1
    targets: torch.Tensor  # float32 (B, K)

    @property
    def size(self) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[3]

    def box_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        coords = [torch.tensor([b[:4] for b in row], dtype=torch.float32) for row in self.boxes]
        labels = [torch.tensor([b[4] for b in row], dtype=torch.int64) for row in self.boxes]
        return [c.reshape(-1, 4) for c in coords], labels

    def mix(self, config: MixConfig, seed: int) -> MixedBatch:
        coords, labels = self.box_tensors()
        generator = torch.Generator().manual_seed(seed)
        return mix_batch(
            self.images, self.targets, coords, labels, self.task, self.good_index, config, generator
        )

    def unboxed(self, i: int) -> set[int]:
        """Image i's defect labels with no box at all (location unknown: the whole image)."""
        return self.labels[i] - {box[4] for box in self.boxes[i]}


def make_batch(
    task: str,
    n_outputs: int,
    good_index: int | None,
    labels: list[set[int]],
    boxes: list[list[Box]],
    shape: tuple[int, int, int] = (3, 16, 16),
) -> Batch:
    """A batch of constant images of `shape` (C, H, W)."""
    count = len(labels)
    images = torch.arange(1, count + 1, dtype=torch.float32).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    images = images.expand(count, *shape).clone()  # (B, C, H, W)
    targets = torch.zeros((count, n_outputs), dtype=torch.float32)
    for row, defects in enumerate(labels):
        if task == "multiclass":
            targets[row, next(iter(defects)) if defects else good_index] = 1.0
        else:
            targets[row, sorted(defects)] = 1.0
    return Batch(task, good_index, labels, boxes, images, targets)


@st.composite
def boxes_for(draw: st.DrawFn, label: int, height: int, width: int) -> list[Box]:
    """0-2 integer boxes of one label; x1 == x0 is a box pushed out of view (zero area)."""
    result = []
    for _ in range(draw(st.integers(0, 2))):
        x0, y0 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        x1, y1 = draw(st.integers(x0, width)), draw(st.integers(y0 + 1, height))
        result.append((x0, y0, x1, y1, label))
    return result


@st.composite
def batches(draw: st.DrawFn, task: str | None = None) -> Batch:
    task = task or draw(st.sampled_from(["multiclass", "multilabel"]))
    count, channels = draw(st.integers(2, 8)), draw(st.integers(1, 3))
    height, width = draw(st.integers(4, 16)), draw(st.integers(4, 16))
    n_outputs = draw(st.integers(2, 5))
    good = draw(st.integers(0, n_outputs - 1)) if task == "multiclass" else None
    labels: list[set[int]] = []
    boxes: list[list[Box]] = []
    for _ in range(count):
        if task == "multiclass":
            cls = draw(st.integers(0, n_outputs - 1))
            defects = set() if cls == good else {cls}
        else:
            defects = set(draw(st.lists(st.integers(0, n_outputs - 1), max_size=3)))
        labels.append(defects)
        boxes.append(
            [b for label in sorted(defects) for b in draw(boxes_for(label, height, width))]
        )
    shape = (channels, height, width)
    return make_batch(task, n_outputs, good, labels, boxes, shape)


@st.composite
def configs(draw: st.DrawFn, mode: str) -> MixConfig:
    min_ratio = draw(st.floats(0.0, 0.6))
    return MixConfig(
        mode=mode,
        prob=1.0,
        alpha=draw(st.floats(0.1, 5.0)),
        min_ratio=min_ratio,
        max_ratio=draw(st.floats(max(min_ratio, 0.01), 1.0)),
        max_cover=draw(st.floats(0.0, 1.0)),
        min_visible=draw(st.floats(0.05, 1.0)),
    )


seeds = st.integers(0, 2**32 - 1)


def changed(batch: Batch, out: MixedBatch) -> torch.Tensor:
    """bool (B, H, W): the pixels that differ from the input image."""
    return (out.images != batch.images).any(dim=1)


def rectangle_of(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of a non-empty mask that must be one filled rectangle."""
    if not mask.any():
        return None
    rows, cols = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
    top, left = int(rows.min()), int(cols.min())
    height, width = int(rows.max()) - top + 1, int(cols.max()) - left + 1
    assert int(mask.sum()) == height * width, "the changed pixels are not one rectangle"
    return top, left, height, width


def partner_of(batch: Batch, out: MixedBatch, i: int, mask: torch.Tensor) -> int:
    """The image whose constant was pasted into image i's changed pixels."""
    values = out.images[i].permute(1, 2, 0)[mask].unique()  # the pasted pixels' values
    assert len(values) == 1, "pasted pixels come from more than one image"
    partner = int(values.item()) - 1
    assert partner != i and 0 <= partner < batch.images.shape[0]
    return partner


def share_in(mask: torch.Tensor, box: Box) -> float:
    """Share of an integer box's pixels inside the mask (0 for a zero-area box)."""
    x0, y0, x1, y1, _ = box
    area = (x1 - x0) * (y1 - y0)
    return int(mask[y0:y1, x0:x1].sum()) / area if area else 0.0


def own_share(mask: torch.Tensor) -> torch.Tensor:
    """The expected lam: 1 - changed pixels / image pixels, as float32."""
    return torch.tensor(1.0 - int(mask.sum()) / mask.numel(), dtype=torch.float32)


def assert_area_in_range(mask: torch.Tensor, config: MixConfig) -> None:
    """The patch's area share is the drawn ratio (clipped into [min, max]) to within h / (2HW):
    the rectangle's width is rounded to whole pixels, moving the area by <= 1/2 px per row."""
    height, width = mask.shape
    rect = rectangle_of(mask)
    # an empty patch: its height h <= H is unseen, so the bound is H / (2HW) = 1 / (2W)
    tolerance = (rect[2] if rect else height) / (2 * height * width) + 1e-12
    share = int(mask.sum()) / (height * width)
    assert config.min_ratio - tolerance <= share <= config.max_ratio + tolerance


def unmixed_config(mode: str) -> MixConfig:
    return MixConfig(mode, 1.0, 1.0, 0.1, 0.5, 0.2, 0.5)


# ---- every mode ------------------------------------------------------------------------------


@given(batches(), st.sampled_from(["none", *MODES]), seeds)
def test_unmixed_batches_are_copies_with_lam_one(batch: Batch, mode: str, seed: int) -> None:
    config = unmixed_config(mode) if mode == "none" else replace(unmixed_config(mode), prob=0.0)
    out = batch.mix(config, seed)
    assert torch.equal(out.images, batch.images)
    assert torch.equal(out.targets, batch.targets)
    assert torch.equal(out.lam, torch.ones(batch.images.shape[0]))
    assert out.images.data_ptr() != batch.images.data_ptr()
    assert out.targets.data_ptr() != batch.targets.data_ptr()


@given(st.data(), st.sampled_from(MODES), seeds)
def test_shapes_dtypes_and_target_ranges_kept_and_inputs_untouched(
    data: st.DataObject, mode: str, seed: int
) -> None:
    batch = data.draw(batches())
    config = data.draw(configs(mode))
    coords, labels = batch.box_tensors()
    before = [t.clone() for t in (batch.images, batch.targets, *coords, *labels)]
    generator = torch.Generator().manual_seed(seed)
    out = mix_batch(
        batch.images, batch.targets, coords, labels, batch.task, batch.good_index, config, generator
    )
    assert out.images.shape == batch.images.shape and out.images.dtype == batch.images.dtype
    assert out.targets.shape == batch.targets.shape and out.targets.dtype == torch.float32
    assert out.lam.shape == (batch.images.shape[0],) and out.lam.dtype == torch.float32
    after = [batch.images, batch.targets, *coords, *labels]
    assert all(torch.equal(old, new) for old, new in zip(before, after, strict=True))
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())
    assert bool(((out.targets >= 0) & (out.targets <= 1 + 1e-6)).all())
    if batch.task == "multiclass":
        sums = out.targets.sum(dim=1)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6)


@given(st.data(), st.sampled_from(MODES), seeds)
def test_same_seed_gives_the_same_batch(data: st.DataObject, mode: str, seed: int) -> None:
    batch, config = data.draw(batches()), data.draw(configs(mode))
    first, second = batch.mix(config, seed), batch.mix(config, seed)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.targets, second.targets)
    assert torch.equal(first.lam, second.lam)


@pytest.mark.parametrize("mode", MODES)
def test_different_seeds_give_different_batches(mode: str) -> None:
    batch = make_batch("multiclass", 3, 0, [set(), {1}, {2}, set()], [[], [], [], []])
    config = MixConfig(mode, 1.0, 1.0, 0.2, 0.5, 1.0, 0.5)
    outputs = {batch.mix(config, seed).images.numpy().tobytes() for seed in range(5)}
    assert len(outputs) > 1


def test_a_batch_of_one_is_not_mixed() -> None:
    batch = make_batch("multiclass", 2, 0, [{1}], [[]])
    out = batch.mix(MixConfig("mixup", 1.0, 1.0, 0.1, 0.5, 0.2, 0.5), seed=0)
    assert torch.equal(out.images, batch.images) and torch.equal(out.lam, torch.ones(1))


# ---- MixUp -----------------------------------------------------------------------------------


@given(batches(), seeds, st.floats(0.1, 5.0))
def test_mixup_blends_each_image_with_another(batch: Batch, seed: int, alpha: float) -> None:
    out = batch.mix(MixConfig("mixup", 1.0, alpha, 0.0, 1.0, 1.0, 1.0), seed)
    count = batch.images.shape[0]
    for i in range(count):
        lam = float(out.lam[i])
        value = float(out.images[i, 0, 0, 0])
        assert torch.equal(out.images[i], torch.full_like(out.images[i], value))
        partners = [
            j
            for j in range(count)
            if j != i
            and abs(lam * (i + 1) + (1 - lam) * (j + 1) - value) <= 1e-5
            and torch.allclose(
                out.targets[i], lam * batch.targets[i] + (1 - lam) * batch.targets[j], atol=1e-6
            )
        ]
        assert partners, f"image {i} is no blend of itself with another image"


# ---- CutMix ----------------------------------------------------------------------------------


@given(st.data(), seeds)
def test_cutmix_pastes_one_rectangle_of_a_partner(data: st.DataObject, seed: int) -> None:
    batch, config = data.draw(batches()), data.draw(configs("cutmix"))
    out = batch.mix(config, seed)
    masks = changed(batch, out)  # (B, H, W)
    for i, mask in enumerate(masks):
        assert out.lam[i] == own_share(mask)
        assert_area_in_range(mask, config)
        if rectangle_of(mask) is None:
            assert torch.equal(out.targets[i], batch.targets[i])
            continue
        j = partner_of(batch, out, i, mask)
        lam = float(own_share(mask))
        expected = lam * batch.targets[i] + (1 - lam) * batch.targets[j]
        assert torch.allclose(out.targets[i], expected, atol=1e-6)


# ---- defect-aware CutMix ---------------------------------------------------------------------


@given(st.data(), seeds)
def test_defect_cutmix_never_covers_too_much_of_a_defect(data: st.DataObject, seed: int) -> None:
    batch, config = data.draw(batches()), data.draw(configs("defect_cutmix"))
    out = batch.mix(config, seed)
    for i, mask in enumerate(changed(batch, out)):
        assert out.lam[i] == own_share(mask)
        for box in batch.boxes[i]:
            assert share_in(mask, box) <= config.max_cover
        if batch.unboxed(i):  # a defect somewhere: the whole image is its box
            assert int(mask.sum()) / mask.numel() <= config.max_cover
        if mask.any():
            assert_area_in_range(mask, config)


def shown_labels(batch: Batch, partner: int, mask: torch.Tensor, min_visible: float) -> set[int]:
    """Oracle: the partner's defects showing at least min_visible of a box in the patch."""
    shown = {box[4] for box in batch.boxes[partner] if share_in(mask, box) >= min_visible}
    if int(mask.sum()) / mask.numel() >= min_visible:
        shown |= batch.unboxed(partner)
    return shown


def visible_target(
    batch: Batch, i: int, j: int, mask: torch.Tensor, config: MixConfig
) -> torch.Tensor:
    """Oracle, multiclass: image i's target after partner j's patch (mask) was pasted in. Each
    defect class weighs the pixels of its boxes that show (own boxes outside the patch, the
    partner's inside it), counting a box when min_visible of it shows; own defects with no box
    in view are the whole image; nothing counted: good."""
    weights = torch.zeros(batch.targets.shape[1], dtype=torch.float64)
    for image, in_patch in ((i, False), (j, True)):
        if not batch.labels[image]:
            continue
        cls = next(iter(batch.labels[image]))
        boxes = [b for b in batch.boxes[image] if (b[2] - b[0]) * (b[3] - b[1]) > 0]
        if not boxes and (not in_patch or not batch.boxes[image]):
            boxes = [(0, 0, mask.shape[1], mask.shape[0], cls)]
        for box in boxes:
            area = (box[2] - box[0]) * (box[3] - box[1])
            inside = share_in(mask, box)
            shown = inside if in_patch else 1.0 - inside
            if shown >= config.min_visible:
                weights[cls] += shown * area
    if weights.sum() == 0:
        weights[batch.good_index] = 1.0
    return (weights / weights.sum()).to(torch.float32)


@given(st.data(), seeds)
def test_defect_cutmix_labels_by_the_defects_that_show(data: st.DataObject, seed: int) -> None:
    batch, config = data.draw(batches()), data.draw(configs("defect_cutmix"))
    out = batch.mix(config, seed)
    if batch.task == "multilabel":
        assert bool((out.targets >= batch.targets).all())  # the base's labels are kept
    for i, mask in enumerate(changed(batch, out)):
        if not mask.any():
            assert torch.equal(out.targets[i], batch.targets[i])
            continue
        j = partner_of(batch, out, i, mask)
        shown = shown_labels(batch, j, mask, config.min_visible)
        expected = batch.targets[i].clone()
        if batch.task == "multilabel":
            expected[sorted(shown)] = 1.0
            assert torch.equal(out.targets[i], expected)
            continue
        assert torch.allclose(out.targets[i], visible_target(batch, i, j, mask, config), atol=1e-6)


def test_a_multiclass_defect_in_view_keeps_its_label_whatever_is_pasted() -> None:
    # both defects fill the left half; max_cover 0 keeps each patch in the right half, so each
    # image's own defect shows whole and the partner's (same place) never does: the labels stay
    left_half = [(0, 0, 8, 16, 1)], [(0, 0, 8, 16, 2)]
    batch = make_batch("multiclass", 3, 0, [{1}, {2}], list(left_half))
    config = MixConfig("defect_cutmix", 1.0, 1.0, 0.05, 0.3, 0.0, 0.01)
    mixed = 0
    for seed in range(10):
        out = batch.mix(config, seed)
        masks = changed(batch, out)
        assert not masks[:, :, :8].any()
        assert torch.equal(out.targets, batch.targets)
        mixed += int(masks.any(dim=(1, 2)).sum())
    assert mixed > 0


def test_a_defect_pasted_into_a_good_image_makes_it_defective() -> None:
    # image 0 is good, image 1 has a small defect in the middle; a half-image patch that shows
    # all of it makes image 0 wholly defect 2 (not half good), one that does not leaves it good
    box = (6, 6, 10, 10, 2)
    batch = make_batch("multiclass", 3, 0, [set(), {2}], [[], [box]])
    config = MixConfig("defect_cutmix", 1.0, 1.0, 0.5, 0.5, 1.0, 1.0)
    seen = set()
    for seed in range(40):
        out = batch.mix(config, seed)
        shows = share_in(changed(batch, out)[0], box) == 1.0
        expected = [0.0, 0.0, 1.0] if shows else [1.0, 0.0, 0.0]
        assert torch.equal(out.targets[0], torch.tensor(expected))
        seen.add(shows)
    assert seen == {True, False}


def test_two_multiclass_defects_share_the_label_by_visible_area() -> None:
    # image 0: defect 1 in an 8x4 box at the top left; image 1: defect 2 filling the bottom 12
    # rows. A patch of the bottom 12 rows (allowed: it covers none of image 0's box) shows all of
    # image 1's defect beside image 0's: 32 px of defect 1 and 192 px of defect 2, whatever the
    # pixel shares (1/4 own, 3/4 pasted)
    batch = make_batch("multiclass", 3, 0, [{1}, {2}], [[(0, 0, 8, 4, 1)], [(0, 4, 16, 16, 2)]])
    config = MixConfig("defect_cutmix", 1.0, 1.0, 0.75, 0.75, 0.0, 1.0)
    for seed in range(40):
        out = batch.mix(config, seed)
        if rectangle_of(changed(batch, out)[0]) == (4, 0, 12, 16):
            assert torch.allclose(out.targets[0], torch.tensor([0.0, 32 / 224, 192 / 224]))
            return
    pytest.fail("no seed drew the bottom 12 rows as image 0's patch")


@pytest.mark.parametrize(("task", "good_index"), [("multiclass", 0), ("multilabel", None)])
@pytest.mark.parametrize("min_visible", [0.25, 0.75])
def test_a_partner_defect_without_boxes_shows_by_patch_area(
    task: str, good_index: int | None, min_visible: float
) -> None:
    # image 0 is good; image 1 has defect 1 somewhere (no box): it is its own whole-image box,
    # so image 1 cannot take a half-image patch (max_cover 0.1), and the half-image patch pasted
    # into image 0 shows about half of the defect's "box"
    batch = make_batch(task, 3, good_index, [set(), {1}], [[], []])
    out = batch.mix(MixConfig("defect_cutmix", 1.0, 1.0, 0.5, 0.5, 0.1, min_visible), seed=0)
    masks = changed(batch, out)
    assert not masks[1].any() and out.lam[1] == 1.0
    assert torch.equal(out.targets[1], batch.targets[1])
    assert 0.25 < 1 - float(out.lam[0]) < 0.75  # 0.5 to within 8 px / 256 px
    expected = torch.zeros(3)  # shown (min_visible 0.25): defect 1; hidden (0.75): good
    if min_visible == 0.25:
        expected[1] = 1.0
    elif good_index is not None:
        expected[good_index] = 1.0
    assert torch.allclose(out.targets[0], expected, atol=1e-6)


@pytest.mark.parametrize(("task", "good_index"), [("multiclass", 0), ("multilabel", None)])
def test_cover_and_visible_limits_are_inclusive(task: str, good_index: int | None) -> None:
    # a whole-image patch (ratio 1): image 1's box is covered exactly max_cover = 1 (allowed) and
    # shows exactly min_visible = 1 of itself when pasted into image 0 (counted)
    batch = make_batch(task, 3, good_index, [set(), {1}], [[], [(0, 0, 8, 8, 1)]])
    out = batch.mix(MixConfig("defect_cutmix", 1.0, 1.0, 1.0, 1.0, 1.0, 1.0), seed=0)
    assert torch.equal(out.lam, torch.zeros(2))
    assert torch.equal(out.images, batch.images.flip(0))
    assert torch.equal(out.targets[0], torch.tensor([0.0, 1.0, 0.0]))
    # image 1 now shows only the good image: multiclass says good, multilabel keeps its label
    assert torch.equal(out.targets[1], batch.targets[0 if task == "multiclass" else 1])


# ---- soft targets ----------------------------------------------------------------------------


def test_soft_targets_one_hot_for_multiclass() -> None:
    targets = torch.tensor([2, 0, 1, 2])
    soft = soft_targets(targets, "multiclass", 3)
    assert soft.dtype == torch.float32 and soft.shape == (4, 3)
    assert torch.equal(soft.argmax(dim=1), targets) and torch.equal(soft.sum(dim=1), torch.ones(4))
    assert torch.equal(targets, torch.tensor([2, 0, 1, 2]))


def test_soft_targets_copy_multilabel_rows() -> None:
    targets = torch.tensor([[0, 1, 1], [0, 0, 0]], dtype=torch.float32)
    soft = soft_targets(targets, "multilabel", 3)
    assert torch.equal(soft, targets) and soft.data_ptr() != targets.data_ptr()


@pytest.mark.parametrize(
    ("targets", "task"),
    [
        (torch.tensor([0, 3]), "multiclass"),  # class 3 of 3 outputs
        (torch.tensor([-1, 0]), "multiclass"),
        (torch.tensor([0.0, 1.0]), "multiclass"),  # not class indices
        (torch.zeros((2, 4)), "multilabel"),  # 4 columns for 3 outputs
        (torch.tensor([[0.0, 2.0, 0.0]]), "multilabel"),
        (torch.tensor([0, 1]), "regression"),
    ],
)
def test_soft_targets_rejects_bad_targets(targets: torch.Tensor, task: str) -> None:
    with pytest.raises(MixError):
        soft_targets(targets, task, 3)


# ---- settings and bad batches ----------------------------------------------------------------


def test_config_from_the_repo_params() -> None:
    params = load_section(REPO / "params.yaml", "train", TrainParams)
    config = MixConfig.from_params(params)
    assert (config.mode, config.prob, config.alpha) == (
        params.mix,
        params.mix_prob,
        params.mix_alpha,
    )
    assert (config.min_ratio, config.max_ratio) == (
        params.cutmix_min_ratio,
        params.cutmix_max_ratio,
    )
    assert (config.max_cover, config.min_visible) == (
        params.defect_max_cover,
        params.defect_min_visible,
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"mode": "mosaic"},
        {"prob": 1.5},
        {"alpha": 0.0},
        {"min_ratio": 0.6, "max_ratio": 0.5},
        {"max_ratio": 0.0, "min_ratio": 0.0},
        {"max_cover": -0.1},
        {"min_visible": 0.0},
        {"prob": float("nan")},
    ],
)
def test_config_rejects_bad_settings(changes: dict[str, Any]) -> None:
    with pytest.raises(MixError):
        replace(unmixed_config("cutmix"), **changes)


def test_mix_batch_rejects_mismatched_batches() -> None:
    batch = make_batch("multiclass", 3, 0, [set(), {1}], [[], [(0, 0, 4, 4, 1)]])
    coords, labels = batch.box_tensors()
    config, generator = unmixed_config("cutmix"), torch.Generator().manual_seed(0)
    with pytest.raises(MixError, match="per image"):
        mix_batch(
            batch.images, batch.targets, coords[:1], labels, "multiclass", 0, config, generator
        )
    with pytest.raises(MixError, match="good_index"):
        mix_batch(
            batch.images, batch.targets, coords, labels, "multiclass", None, config, generator
        )
    with pytest.raises(MixError, match="good_index"):
        mix_batch(batch.images, batch.targets, coords, labels, "multilabel", 0, config, generator)
    with pytest.raises(MixError, match="box labels"):
        bad = [labels[0], torch.tensor([3])]
        mix_batch(batch.images, batch.targets, coords, bad, "multiclass", 0, config, generator)
