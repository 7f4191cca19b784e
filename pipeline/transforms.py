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

`BatchAugment` is the same augmentation for a whole batch on the training device
(`train.augment_on: device`): one affine warp per image (crop, flips and rotation composed into
one matrix, one `grid_sample` for the batch) and colour factors per image, drawn from an
explicit generator. On a GPU the per-image Pillow work of the DataLoader workers caps a training
loop far below what the GPU can step (bench/train_speed.py); as tensor ops the batch costs
little there, and on a 2-core CPU a quarter of the per-image path at 128 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import box_area
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


def drop_hidden_defects(
    targets: torch.Tensor,
    boxes: list[torch.Tensor],
    box_labels: list[torch.Tensor],
    good_index: int | None,
) -> torch.Tensor:
    """The targets of an augmented batch once defects out of view no longer count
    (train.relabel_hidden): a defect that has boxes, none of them with a pixel (area >= 1)
    left on the canvas after augmentation (a crop or rotation moved them out; augmentation
    clamps such a box to zero area), is gone from its image. Multiclass (targets int64 (B,),
    good_index the good class's output): the image becomes good. Multilabel (float (B, L),
    good_index None): that label becomes 0. A defect without boxes, or with any box still in
    view, keeps its label. boxes[i] float (n_i, 4) XYXY, box_labels[i] int64 (n_i,) output
    indices. Returns a new tensor; the inputs are never written to."""
    out = targets.clone()
    for row, (found, labels) in enumerate(zip(boxes, box_labels, strict=True)):
        if not len(found):
            continue
        labels = labels.cpu()
        shown = set(labels[box_area(found.detach().cpu()) >= 1].tolist())
        hidden = set(labels.tolist()) - shown
        if good_index is None:
            out[row, sorted(hidden)] = 0
        elif int(targets[row]) in hidden:
            out[row] = good_index
    return out


def _planes(image: Image.Image) -> torch.Tensor:
    """uint8 (3, S, S) of an RGB or grey PIL image (the grey plane three times); an RGB image's
    is a view of its (S, S, 3) pixels: batching stacks it into a contiguous batch."""
    if image.mode == "L":
        return torch.from_numpy(np.repeat(np.asarray(image)[None], 3, axis=0))  # (3, S, S)
    return F.pil_to_tensor(image)


_CROP_LOG_RATIOS = (math.log(3 / 4), math.log(4 / 3))  # RandomResizedCrop's aspect range
_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_CORNERS = [[0, 1], [2, 1], [0, 3], [2, 3]]  # a box's four corners as XYXY columns


@dataclass(frozen=True)
class BatchAugment:
    """Train-time augmentation of a batch on its own device, as `build_augment` does per image:
    a random resized crop (area share in [crop_scale_min, 1], aspect 3/4..4/3), flips, rotation
    in [-rotate_degrees, rotate_degrees] (corners filled black), then brightness, contrast and
    saturation factors in [1 - color_jitter, 1 + color_jitter], in that order (v2's ColorJitter
    shuffles the order per image). Geometry is one bilinear warp, so pixels are resampled once
    instead of once per step.

    Call: (uint8 images (B, 3, S, S) on any device, B box tensors (n_i, 4) XYXY on the S x S
    canvas, a CPU generator) -> (float images (B, 3, S, S) in [0, 255] on the images' device,
    B float32 (n_i, 4) boxes: each the box enclosing its moved corners, clamped to the canvas,
    so a box pushed out of view has zero area and none disappears). All draws come from the
    generator (on the host, a fixed count per image): one generator state gives one result on
    any device, up to floating point. Inputs are never written to.
    """

    size: int
    crop_scale_min: float
    hflip: bool
    vflip: bool
    rotate_degrees: float
    color_jitter: float

    @classmethod
    def from_params(cls, params: TrainParams) -> BatchAugment | None:
        """The batch augmentation named by `params`; None when every part is switched off."""
        found = cls(
            params.image_size,
            params.crop_scale_min,
            params.hflip,
            params.vflip,
            params.rotate_degrees,
            params.color_jitter,
        )
        return found if found.moves or found.color_jitter > 0 else None

    @property
    def moves(self) -> bool:
        """Whether any geometric part is on."""
        return self.crop_scale_min < 1 or self.hflip or self.vflip or self.rotate_degrees > 0

    def __call__(
        self, images: torch.Tensor, boxes: list[torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        count, size = len(images), self.size
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"expected uint8 images (B, 3, {size}, {size}), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        draws = torch.rand((count, 10), generator=generator, dtype=torch.float64)  # (B, 10)
        x = images.float()
        inverse = self._warp(draws[:, :7])  # (B, 3, 3): output -> input, normalised coords
        if self.moves:
            theta = inverse[:, :2].to(x.device, torch.float32)  # (B, 2, 3)
            grid = nnf.affine_grid(theta, [count, 3, size, size], align_corners=False)
            x = nnf.grid_sample(x, grid, "bilinear", "zeros", align_corners=False)
        if self.color_jitter > 0:
            factors = 1 + self.color_jitter * (2 * draws[:, 7:] - 1)  # (B, 3)
            x = _jitter(x, factors.to(x.device, torch.float32))
        return x, _move_boxes(boxes, torch.linalg.inv(inverse), size)

    def _warp(self, draws: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) float64: each output pixel's place in the input, in normalised coordinates
        (-1..1 across the canvas): crop of flip of rotation, from uniform draws (B, 7)."""
        count = len(draws)
        crop = torch.eye(3, dtype=torch.float64).repeat(count, 1, 1)  # (B, 3, 3)
        if self.crop_scale_min < 1:
            area = self.crop_scale_min + (1 - self.crop_scale_min) * draws[:, 0]
            low, high = _CROP_LOG_RATIOS
            ratio = torch.exp(low + (high - low) * draws[:, 1])
            width = torch.sqrt(area * ratio).clamp(max=1.0)  # shares of the canvas side
            height = torch.sqrt(area / ratio).clamp(max=1.0)
            crop[:, 0, 0], crop[:, 1, 1] = width, height
            crop[:, 0, 2] = 2 * (1 - width) * draws[:, 2] + width - 1  # crop centre, normalised
            crop[:, 1, 2] = 2 * (1 - height) * draws[:, 3] + height - 1
        flip = torch.ones((count, 3), dtype=torch.float64)  # (B, 3)
        if self.hflip:
            flip[:, 0] = torch.where(draws[:, 4] < 0.5, -1.0, 1.0)
        if self.vflip:
            flip[:, 1] = torch.where(draws[:, 5] < 0.5, -1.0, 1.0)
        angle = torch.deg2rad(self.rotate_degrees * (2 * draws[:, 6] - 1))  # (B,)
        rotation = torch.eye(3, dtype=torch.float64).repeat(count, 1, 1)
        rotation[:, 0, 0], rotation[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
        rotation[:, 1, 0], rotation[:, 1, 1] = torch.sin(angle), torch.cos(angle)
        return crop @ torch.diag_embed(flip) @ rotation


def _jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation factors (B, 3) applied to float pixels (B, 3, S, S)
    in [0, 255], clamped after each step as torchvision's adjust_* functions do."""
    brightness, contrast, saturation = (factors[:, k].view(-1, 1, 1, 1) for k in range(3))
    weights = torch.tensor(_GREY, device=x.device).view(1, 3, 1, 1)
    x = (x * brightness).clamp(0, 255)
    mean = (x * weights).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = torch.lerp(mean, x, contrast).clamp(0, 255)
    grey = (x * weights).sum(dim=1, keepdim=True)  # (B, 1, S, S)
    return torch.lerp(grey, x, saturation).clamp(0, 255)


def _move_boxes(boxes: list[torch.Tensor], forward: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Each image's boxes (n_i, 4) XYXY on the size x size canvas moved by its image's map
    `forward` (B, 3, 3, input -> output, normalised coordinates): the box enclosing the four
    moved corners, clamped to the canvas. float32, in the same order, never sharing memory with
    the inputs."""
    counts = [len(found) for found in boxes]
    if not sum(counts):
        return [found.to(torch.float32, copy=True) for found in boxes]
    owner = torch.repeat_interleave(torch.arange(len(boxes)), torch.tensor(counts))  # (N,)
    xyxy = torch.cat(boxes).to(torch.float64)  # (N, 4)
    corners = xyxy[:, _CORNERS] * (2 / size) - 1  # (N, 4, 2), normalised
    corners = torch.cat([corners, torch.ones_like(corners[..., :1])], dim=-1)  # (N, 4, 3)
    moved = (corners @ forward[owner].transpose(1, 2))[..., :2]  # (N, 4, 2)
    pixels = (moved + 1) * (size / 2)
    out = torch.cat([pixels.amin(dim=1), pixels.amax(dim=1)], dim=1).clamp(0, size)  # (N, 4)
    return list(out.to(torch.float32).split(counts))
