"""Train-time augmentation of decoded uint8 images together with their defect boxes.

Train and eval see images differently, on purpose:
- train: `build_augment` (random crop, flips, rotation, colour jitter) runs on each uint8 (3, S, S)
  image from the decode cache, and the same geometric change is applied to its boxes, so a
  defect box still covers the defect's pixels (defect-aware CutMix relies on that);
- eval (validation, test, inference): no augmentation at all. The decode cache is already S x S,
  and `pipeline.inference.normalise` does the float conversion and ImageNet normalisation for
  both sides, so train and eval differ only by the random augmentation.

The transforms run on a PIL image of the uint8 pixels, not on the tensor: torchvision's v2
dispatches PIL inputs to Pillow's C routines, which on 128-224 px images are 1.5-2.3x faster than
its tensor kernels for the same transforms (rotation 3-5x: no float grid), and a CPU training
loop pays for every millisecond of per-image augmentation (bench/train_speed.py).

Randomness is explicit: torchvision's v2 transforms draw from torch's global CPU generator, so
`augment` runs them inside `torch.random.fork_rng` seeded from the caller's seed. The caller's
global RNG state is the same before and after, and one seed always gives one result.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipeline.params import TrainParams


def build_augment(params: TrainParams) -> v2.Transform | None:
    """The train-time augmentation named by `params`; None when every part is switched off.

    Input and output: an RGB image of S x S pixels, S = params.image_size (a PIL image, as
    `augment` passes it, or a uint8 `tv_tensors.Image` (3, S, S)), and a
    `tv_tensors.BoundingBoxes` (n, 4) XYXY on the (S, S) canvas. Invariants: the output image
    stays uint8 and S x S; the output has exactly the n input boxes in the same order (no
    SanitizeBoundingBoxes: each box stays aligned with its label), clamped to the canvas, so a
    box pushed out of view has zero area instead of disappearing.
    """
    size = params.image_size
    steps: list[v2.Transform] = []
    if params.crop_scale_min < 1:
        steps.append(v2.RandomResizedCrop(size, scale=(params.crop_scale_min, 1.0), antialias=True))
    if params.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if params.vflip:
        steps.append(v2.RandomVerticalFlip())
    if params.rotate_degrees > 0:
        steps.append(v2.RandomRotation(params.rotate_degrees))  # same size; corners filled with 0
    if params.color_jitter > 0:
        strength = params.color_jitter
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
    if not steps:
        return None
    # "hard": clamp to the canvas whatever clamping mode the boxes carry
    steps.append(v2.ClampBoundingBoxes(clamping_mode="hard"))
    return v2.Compose(steps)


def augment(
    transform: v2.Transform, image: torch.Tensor, boxes: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `transform` to one image and its boxes, deterministically for `seed`.

    image: uint8 (3, S, S); boxes: float (n, 4) XYXY on the (S, S) canvas, n may be 0.
    Returns plain tensors (image uint8 (3, S', S'), boxes float (n, 4)); S' = S for
    `build_augment`'s transforms. Invariants: the same (transform, inputs, seed) gives the same
    output; the caller's global RNG state is unchanged; the inputs are never written to and the
    outputs never share memory with them (the image may be a view of the decode cache).
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected a uint8 (3, S, S) image, got {image.dtype} {tuple(image.shape)}"
        )
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (n, 4), got {tuple(boxes.shape)}")
    height, width = image.shape[1:]
    # PIL copies the pixels in and pil_to_tensor copies them out, so nothing is shared with
    # the input even when a transform does nothing (a flip not drawn returns its input). In:
    # three (S, S) planes merged, a third of the cost of F.to_pil_image's permuted copy.
    planes = image.numpy()  # (3, S, S)
    # A grey picture (three equal planes: how the decode cache holds a grey file) goes through
    # as one plane: every step treats the planes alike and saturation has nothing to change,
    # so the pixels are the same as in RGB, for about half the time.
    is_grey = np.array_equal(planes[0], planes[1]) and np.array_equal(planes[0], planes[2])
    pixels = (
        Image.fromarray(planes[0])
        if is_grey
        else Image.merge("RGB", [Image.fromarray(plane) for plane in planes])
    )
    # only the CPU generator: torch.manual_seed would also reseed (and so change) CUDA's
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if not len(boxes):
            # Alone: v2 draws each transform's parameters once per call whatever it is given,
            # so the pixels are those it would give with boxes, without the box kernels'
            # dispatch (about a third of the time at 128 px). Most good parts have no boxes.
            return _planes(transform(pixels)), boxes.to(torch.float32, copy=True)
        frame = tv_tensors.BoundingBoxes(
            boxes.to(torch.float32, copy=True), format="XYXY", canvas_size=(height, width)
        )
        out_image, out_boxes = transform(pixels, frame)
    return _planes(out_image), out_boxes.as_subclass(torch.Tensor)


def _planes(image: Image.Image) -> torch.Tensor:
    """uint8 (3, S, S) of an RGB or grey PIL image (the grey plane three times); an RGB image's
    is a view of its (S, S, 3) pixels: batching stacks it into a contiguous batch."""
    if image.mode == "L":
        return torch.from_numpy(np.repeat(np.asarray(image)[None], 3, axis=0))  # (3, S, S)
    return F.pil_to_tensor(image)
