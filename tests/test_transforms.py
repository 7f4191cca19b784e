"""Tests of pipeline.transforms: which augmentations are built, seeding, boxes following pixels,
per image (augment) and per batch (BatchAugment)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from pipeline.params import TrainParams, load_section
from pipeline.transforms import BatchAugment, augment, build_augment, drop_hidden_defects

SIZE = 32
ALL_OFF: dict[str, Any] = {
    "image_size": SIZE,
    "hflip": False,
    "vflip": False,
    "rotate_degrees": 0.0,
    "crop_scale_min": 1.0,
    "color_jitter": 0.0,
}
ALL_ON: dict[str, Any] = {
    "hflip": True,
    "vflip": True,
    "rotate_degrees": 30.0,
    "crop_scale_min": 0.5,
    "color_jitter": 0.3,
}


def train_params(**changes: Any) -> TrainParams:
    """The repository's train params with every augmentation off, then `changes`."""
    params = load_section(REPO / "params.yaml", "train", TrainParams).model_dump()
    return TrainParams.model_validate({**params, **ALL_OFF, **changes})


def noise_image(seed: int, size: int = SIZE) -> torch.Tensor:
    """uint8 (3, size, size) of dim noise (0..100), so a 255 blob stands out."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 101, (3, size, size), dtype=np.uint8))


def with_blob(image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """A copy of `image` with pixels x0 <= x < x1, y0 <= y < y1 set to 255 (white)."""
    x0, y0, x1, y1 = box
    out = image.clone()
    out[:, y0:y1, x0:x1] = 255
    return out


def white_mask(image: torch.Tensor) -> torch.Tensor:
    """bool (H, W): pixels that are 255 in every channel."""
    return (image == 255).all(dim=0)


def test_build_augment_is_none_when_everything_is_off() -> None:
    assert build_augment(train_params()) is None


@pytest.mark.parametrize("name", sorted(ALL_ON))
def test_each_augmentation_alone_keeps_dtype_size_and_boxes(name: str) -> None:
    transform = build_augment(train_params(**{name: ALL_ON[name]}))
    assert transform is not None
    boxes = torch.tensor([[2.0, 3.0, 10.0, 12.0], [20.0, 20.0, 31.0, 30.0]])
    for seed in range(5):
        image, out_boxes = augment(transform, noise_image(seed), boxes, seed)
        assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
        assert out_boxes.dtype == torch.float32 and out_boxes.shape == (2, 4)
        assert bool(((out_boxes >= 0) & (out_boxes <= SIZE)).all())  # clamped to the canvas


def test_same_seed_same_output_and_global_rng_untouched() -> None:
    transform = build_augment(train_params(**ALL_ON))
    assert transform is not None
    image, boxes = noise_image(0), torch.tensor([[4.0, 4.0, 20.0, 16.0]])
    image_before, boxes_before = image.clone(), boxes.clone()
    state = torch.get_rng_state()
    first = augment(transform, image, boxes, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    second = augment(transform, image, boxes, seed=11)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # the seed matters: other seeds give other images
    others = [augment(transform, image, boxes, seed)[0] for seed in range(12, 20)]
    assert any(not torch.equal(first[0], other) for other in others)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(image, image_before) and torch.equal(boxes, boxes_before)


def test_outputs_never_share_memory_with_inputs() -> None:
    # a flip that is not drawn returns its input: augment must still hand back new tensors
    transform = build_augment(train_params(hflip=True))
    assert transform is not None
    image, boxes = noise_image(1), torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    image_before, boxes_before = image.clone(), boxes.clone()
    for seed in range(8):
        out_image, out_boxes = augment(transform, image, boxes, seed)
        out_image.fill_(255)
        out_boxes.fill_(-1.0)
        assert torch.equal(image, image_before) and torch.equal(boxes, boxes_before)


def test_hflip_moves_the_box_with_its_pixels() -> None:
    transform = build_augment(train_params(hflip=True))
    assert transform is not None
    blob = (3, 5, 11, 20)  # off-centre: the image is not its own mirror
    image = with_blob(noise_image(2), blob)
    boxes = torch.tensor([blob], dtype=torch.float32)
    flipped = 0
    for seed in range(16):
        out_image, out_boxes = augment(transform, image, boxes, seed)
        assert torch.equal(out_image, image) or torch.equal(out_image, image.flip(-1))
        flipped += torch.equal(out_image, image.flip(-1))
        x0, y0, x1, y1 = (int(value) for value in out_boxes[0])
        mask = white_mask(out_image)
        # exactly the pixels under the box are white
        assert bool(mask[y0:y1, x0:x1].all()) and int(mask.sum()) == (x1 - x0) * (y1 - y0)
    assert 0 < flipped < 16  # both outcomes were drawn


def test_vflip_moves_the_box_with_its_pixels() -> None:
    transform = build_augment(train_params(vflip=True))
    assert transform is not None
    blob = (3, 5, 11, 20)
    image = with_blob(noise_image(3), blob)
    outcomes = set()
    for seed in range(16):
        out_image, out_boxes = augment(
            transform, image, torch.tensor([blob], dtype=torch.float32), seed
        )
        x0, y0, x1, y1 = (int(value) for value in out_boxes[0])
        mask = white_mask(out_image)
        assert bool(mask[y0:y1, x0:x1].all()) and int(mask.sum()) == (x1 - x0) * (y1 - y0)
        outcomes.add(y0)
    assert outcomes == {5, SIZE - 20}


def test_rotation_keeps_the_blob_centre_inside_its_box() -> None:
    size = 64
    transform = build_augment(train_params(image_size=size, rotate_degrees=45.0))
    assert transform is not None
    blob = (40, 12, 48, 20)  # off-centre, within the inscribed circle at any angle
    image = with_blob(noise_image(4, size), blob)
    boxes = torch.tensor([blob], dtype=torch.float32)
    moved = 0
    for seed in range(10):
        out_image, out_boxes = augment(transform, image, boxes, seed)
        ys, xs = torch.nonzero(white_mask(out_image), as_tuple=True)
        assert len(xs) > 0
        cx, cy = float(xs.float().mean()) + 0.5, float(ys.float().mean()) + 0.5
        x0, y0, x1, y1 = out_boxes[0].tolist()
        assert x0 <= cx <= x1 and y0 <= cy <= y1
        moved += not torch.allclose(out_boxes, boxes)
    assert moved > 0


def test_boxes_pushed_out_of_view_stay_with_zero_area() -> None:
    transform = build_augment(train_params(crop_scale_min=0.08))
    assert transform is not None
    boxes = torch.tensor([[0.0, 0.0, 3.0, 3.0], [10.0, 10.0, 20.0, 20.0]])  # a corner box first
    areas = []
    for seed in range(20):
        _, out_boxes = augment(transform, noise_image(5), boxes, seed)
        assert out_boxes.shape == (2, 4)
        assert bool((out_boxes[:, 2:] >= out_boxes[:, :2]).all())
        width, height = out_boxes[0, 2] - out_boxes[0, 0], out_boxes[0, 3] - out_boxes[0, 1]
        areas.append(float(width * height))
    assert min(areas) == 0.0  # the corner box was cropped away at least once, and kept


def test_a_defect_with_every_box_out_of_view_is_dropped_and_nothing_else() -> None:
    gone = torch.tensor([[32.0, 4.0, 32.0, 9.0]])  # clamped to zero width at the edge
    sliver = torch.tensor([[31.0, 4.0, 32.0, 5.0]])  # one pixel still in view
    boxes = [gone, torch.cat([gone, sliver]), gone, torch.zeros((0, 4)), gone]
    labels = [torch.tensor(found, dtype=torch.int64) for found in ([1], [2, 2], [2], [], [1])]
    # multiclass: image 0's defect is hidden; 1 shows a sliver of its defect; 2's box is
    # another class's than its label (kept: its own defect has no box); 3 has no boxes; 4 is
    # good already
    classes = torch.tensor([1, 2, 1, 2, 0])
    out = drop_hidden_defects(classes, boxes, labels, good_index=0)
    assert out.tolist() == [0, 2, 1, 2, 0] and classes.tolist() == [1, 2, 1, 2, 0]
    # multilabel over labels 0-2: only a label whose every box is hidden goes
    hot = torch.tensor(
        [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    )
    out = drop_hidden_defects(hot, boxes, labels, good_index=None)
    assert out.tolist() == [[0, 0, 1], [0, 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert hot[0].tolist() == [0.0, 1.0, 1.0]  # the input is untouched


def test_images_without_boxes() -> None:
    transform = build_augment(train_params(**ALL_ON))
    assert transform is not None
    image, boxes = augment(transform, noise_image(6), torch.zeros((0, 4)), seed=3)
    assert image.shape == (3, SIZE, SIZE) and boxes.shape == (0, 4)
    # the pixels are the same as the same image's with a box, seed for seed (the box-free path
    # skips the box kernels, not a random draw)
    with_box = torch.tensor([[4.0, 4.0, 20.0, 16.0]])
    for seed in range(10):
        alone, _ = augment(transform, noise_image(6), torch.zeros((0, 4)), seed)
        boxed, _ = augment(transform, noise_image(6), with_box, seed)
        assert torch.equal(alone, boxed)


def test_grey_images_get_the_pixels_and_boxes_of_their_rgb_augmentation() -> None:
    # a grey picture (three equal planes) takes a one-plane path: the result must be what the
    # same transform makes of the RGB picture, seed for seed, with and without boxes
    transform = build_augment(train_params(**ALL_ON))
    assert transform is not None
    grey = noise_image(8)[:1].repeat(3, 1, 1)  # (3, S, S), planes equal
    rgb = Image.fromarray(grey.permute(1, 2, 0).numpy(), "RGB")
    box = torch.tensor([[4.0, 4.0, 20.0, 16.0]])
    for seed in range(10):
        for boxes in (box, torch.zeros((0, 4))):
            image, moved = augment(transform, grey, boxes, seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                canvas = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(SIZE, SIZE))
                expected, expected_boxes = transform(rgb, canvas)
            assert torch.equal(image, F.pil_to_tensor(expected))
            assert torch.equal(moved, expected_boxes.as_subclass(torch.Tensor))
    image.fill_(0)  # a new tensor of its own, as for RGB images
    assert int(grey.max()) > 0


def test_rejects_a_float_image() -> None:
    transform = build_augment(train_params(hflip=True))
    assert transform is not None
    with pytest.raises(ValueError, match="uint8"):
        augment(transform, noise_image(7).float(), torch.zeros((0, 4)), seed=0)


# --- BatchAugment: the same augmentation per batch, on the training device ---


def batch_augment(**changes: Any) -> BatchAugment:
    found = BatchAugment.from_params(train_params(**changes))
    assert found is not None
    return found


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_batch_augment_is_none_when_everything_is_off() -> None:
    assert BatchAugment.from_params(train_params()) is None
    for name, value in ALL_ON.items():
        assert BatchAugment.from_params(train_params(**{name: value})) is not None, name


def test_batch_augment_keeps_shape_range_and_every_box_and_leaves_inputs_alone() -> None:
    transform = batch_augment(**ALL_ON)
    images = torch.stack([noise_image(seed) for seed in range(6)])  # (6, 3, S, S)
    boxes = [torch.tensor([[2.0, 3.0, 10.0, 12.0], [20.0, 20.0, 31.0, 30.0]])] * 3
    boxes += [torch.zeros((0, 4)), torch.tensor([[0.0, 0.0, 32.0, 32.0]]), torch.zeros((0, 4))]
    images_before, boxes_before = images.clone(), [b.clone() for b in boxes]
    out, moved = transform(images, boxes, seeded(0))
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    assert [b.shape for b in moved] == [b.shape for b in boxes]
    assert all(b.dtype == torch.float32 for b in moved)
    for found in moved:
        assert bool(((found >= 0) & (found <= SIZE)).all())  # clamped to the canvas
        assert bool((found[:, 2:] >= found[:, :2]).all())
    assert torch.equal(images, images_before)
    assert all(torch.equal(a, b) for a, b in zip(boxes, boxes_before, strict=True))
    for found in moved:
        found.fill_(-1.0)  # written to: the inputs must not change
    assert all(torch.equal(a, b) for a, b in zip(boxes, boxes_before, strict=True))


def test_batch_augment_same_generator_state_same_output() -> None:
    transform = batch_augment(**ALL_ON)
    images = torch.stack([noise_image(seed) for seed in range(4)])
    boxes = [torch.tensor([[4.0, 4.0, 20.0, 16.0]])] * 4
    first, second = transform(images, boxes, seeded(5)), transform(images, boxes, seeded(5))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))
    other = transform(images, boxes, seeded(6))
    assert not torch.equal(first[0], other[0])
    # each image gets its own draw: equal inputs come out different
    same = noise_image(0).expand(4, -1, -1, -1)
    out, _ = transform(same, [torch.zeros((0, 4))] * 4, seeded(5))
    assert not torch.equal(out[0], out[1])


def test_batch_flips_mirror_whole_images_and_draw_both_ways() -> None:
    transform = batch_augment(hflip=True, vflip=True)
    images = torch.stack([noise_image(seed) for seed in range(32)])
    out, _ = transform(images, [torch.zeros((0, 4))] * 32, seeded(1))
    seen = set()
    for image, result in zip(images.float(), out, strict=True):
        views = {dims: image.flip(dims) if dims else image for dims in ((), (2,), (1,), (1, 2))}
        matched = [dims for dims, view in views.items() if torch.allclose(result, view, atol=1e-2)]
        assert len(matched) == 1
        seen.add(matched[0])
    assert seen == {(), (2,), (1,), (1, 2)}


@settings(max_examples=60, deadline=None)
@given(
    x0=st.integers(0, 40),
    y0=st.integers(0, 40),
    width=st.integers(8, 24),
    height=st.integers(8, 24),
    crop=st.floats(0.5, 1.0),
    degrees=st.floats(0.0, 45.0),
    seed=st.integers(0, 2**32),
)
def test_batch_boxes_follow_their_pixels(
    x0: int, y0: int, width: int, height: int, crop: float, degrees: float, seed: int
) -> None:
    """A white blob's box, moved with the batch, encloses the blob's moved pixels and no more
    than the warp's blur (and, rotated, the corners' enclosing box) adds."""
    size = 64
    blob = (x0, y0, x0 + width, y0 + height)
    image = with_blob(torch.zeros((3, size, size), dtype=torch.uint8), blob)
    transform = batch_augment(
        image_size=size, hflip=True, vflip=True, crop_scale_min=crop, rotate_degrees=degrees
    )
    out, moved = transform(image[None], [torch.tensor([blob], dtype=torch.float32)], seeded(seed))
    ys, xs = torch.nonzero(out[0, 0] > 127, as_tuple=True)
    box = moved[0][0].tolist()
    if not len(xs):  # cropped out of view: the box has (almost) no area left
        assert (box[2] - box[0]) * (box[3] - box[1]) < 2 * size
        return
    seen = [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]
    assert box[0] - 1 <= seen[0] and box[1] - 1 <= seen[1]  # every white pixel inside ...
    assert seen[2] <= box[2] + 1 and seen[3] <= box[3] + 1
    slack = 2 + 3 * size * (1 - crop)  # ... and the box no larger than blur and corners make it
    assert seen[0] - box[0] <= slack and seen[1] - box[1] <= slack
    assert box[2] - seen[2] <= slack and box[3] - seen[3] <= slack


def test_batch_colour_jitter_scales_flat_grey_by_a_factor_in_range() -> None:
    # on a flat grey image contrast and saturation change nothing: only brightness shows
    transform = batch_augment(color_jitter=0.3)
    flat = torch.full((16, 3, SIZE, SIZE), 100, dtype=torch.uint8)
    out, _ = transform(flat, [torch.zeros((0, 4))] * 16, seeded(2))
    assert torch.equal(out, out[:, :1, :1, :1].expand_as(out))  # each image flat, still grey
    factors = out[:, 0, 0, 0] / 100
    assert bool(((factors >= 0.7 - 1e-5) & (factors <= 1.3 + 1e-5)).all())
    assert len(set(factors.tolist())) == 16


def test_batch_augment_rejects_images_it_was_not_built_for() -> None:
    transform = batch_augment(hflip=True)
    with pytest.raises(ValueError, match="uint8"):
        transform(noise_image(0)[None].float(), [torch.zeros((0, 4))], seeded(0))
    with pytest.raises(ValueError, match=f"{SIZE}, {SIZE}"):
        transform(noise_image(0, 16)[None], [torch.zeros((0, 4))], seeded(0))
