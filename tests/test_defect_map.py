"""The defect map (train.defect_map_weight): its targets drawn from the defect boxes, its loss,
the maps mixed with their pixels, the head training beside the classifier, left out of the
saved model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import REPO

from pipeline.distributed import Process
from pipeline.errors import ApexLoopError
from pipeline.inference import normalise
from pipeline.manifest import TaskInfo
from pipeline.models import (
    DEFECT_MAP,
    FEATURE_MAPS,
    add_defect_map,
    build_model,
    without_defect_map,
)
from pipeline.params import TrainParams, load_section
from pipeline.samplers import epoch_generator
from pipeline.training import (
    AUGMENT_STREAM,
    PASTE_STREAM,
    Job,
    Loop,
    Side,
    _inputs,
    defect_map_loss,
    defect_maps,
    rank_generator,
)

MULTICLASS = TaskInfo("multiclass", ("good", "scratch"), "good")
CPU = torch.device("cpu")
NONE = (torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64))
SIZE = 32


def test_defect_maps_mark_the_pixels_a_box_overlaps_and_which_maps_are_known() -> None:
    boxes = [torch.tensor([[1.5, 0.0, 3.0, 2.0]]), torch.zeros((0, 4)), torch.zeros((0, 4))]
    maps = defect_maps(boxes, torch.tensor([True, True, False]), 4, CPU)
    assert maps.shape == (3, 2, 4, 4)
    expected = torch.zeros(4, 4)
    expected[0:2, 1:3] = 1.0  # pixel 1 spans [1, 2): the box from x = 1.5 overlaps it
    assert torch.equal(maps[0, 0], expected)
    assert not maps[1:, 0].any()  # no boxes: no defect pixels
    assert maps[:, 1].flatten(1).tolist() == [[1.0] * 16, [1.0] * 16, [0.0] * 16]


def test_the_map_loss_counts_a_cell_with_any_defect_pixel_and_only_known_maps() -> None:
    maps = torch.zeros(2, 2, 4, 4)
    maps[0, 0, 3, 3] = 1.0  # one defect pixel, in cell (1, 1) of a 2 x 2 map
    maps[0, 1] = 1.0  # image 0's map is known, image 1's is not
    logits = torch.zeros(2, 1, 2, 2)
    logits[1] = 50.0  # would cost a lot, but image 1's map is unknown
    target = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, 0], target)
    assert defect_map_loss(logits, maps).item() == pytest.approx(expected.item())


def _loop(boxes: list[tuple[torch.Tensor, torch.Tensor]], **changes: Any) -> Loop:
    """A Loop (resnet18, augmentation off) on 8 flat images, image i filled with 30 i and
    defective when i is odd."""
    labels = torch.tensor([i % 2 for i in range(8)])
    images = (torch.arange(8, dtype=torch.uint8) * 30).view(-1, 1, 1, 1).expand(-1, 3, SIZE, SIZE)
    side = Side(images.contiguous(), labels, boxes)
    settings = load_section(REPO / "params.yaml", "train", TrainParams).model_copy(
        update={
            "image_size": SIZE, "batch_size": 8, "hflip": False, "vflip": False,
            "color_jitter": 0.0, "defect_map_weight": 1.0, **changes,
        }
    )  # fmt: skip
    model = build_model("resnet18", 2, False, 0.0)
    return Loop(model, side, side, settings, Job(MULTICLASS, CPU, Process(0, 1), None, "", print))


def _boxed(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i's boxes: one box on the defective (odd) images."""
    box = torch.tensor([[4.0 + i, 2.0, 20.0 + i, 30.0]])
    return (box, torch.tensor([1])) if i % 2 else NONE


def _generators() -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """_inputs' mixing, augmentation and pasting generators of epoch 1."""
    return (
        epoch_generator(5, 1),
        rank_generator(AUGMENT_STREAM, 7, 1, 0),
        rank_generator(PASTE_STREAM, 7, 1, 0),
    )


def test_cutmix_pastes_each_map_with_its_pixels() -> None:
    boxes = [_boxed(i) for i in range(8)]
    loop = _loop(boxes, mix="cutmix", mix_prob=1.0)
    batch = next(iter(loop.loader(1)))
    x, _, maps, _ = _inputs(loop, batch, *_generators())
    assert x.shape == (8, 3, SIZE, SIZE) and maps is not None and maps.shape == (8, 2, SIZE, SIZE)
    # every pixel is its own image's or its partner's; its map value must be that image's
    values = normalise(batch[0], CPU)[:, 0, 0, 0]  # (B,) each unmixed image's one value
    source = (x[:, 0, :, :, None] - values).abs().argmin(dim=-1)  # (B, S, S) batch position
    alone = defect_maps(list(batch[2]), torch.ones(8, dtype=torch.bool), SIZE, CPU)
    rows, columns = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    assert torch.equal(maps[:, 0], alone[source, 0, rows, columns])
    assert (source != torch.arange(8)[:, None, None]).any()  # something was pasted
    assert maps[:, 1].eq(1.0).all()  # good images and boxed defects: every map known


def test_a_defective_image_without_boxes_has_an_unknown_map() -> None:
    boxes = [_boxed(i) if i != 3 else NONE for i in range(8)]
    loop = _loop(boxes, mix="none")
    batch = next(iter(loop.loader(1)))
    _, _, maps, _ = _inputs(loop, batch, *_generators())
    assert maps is not None
    known = maps[:, 1, 0, 0].tolist()
    shown = [index for _, _, index in loop.draws]
    assert known == [0.0 if index == 3 else 1.0 for index in shown]


@pytest.mark.parametrize("name", sorted(FEATURE_MAPS))
def test_each_architecture_maps_cells_of_the_chosen_size(name: str) -> None:
    for cell in (32, 16):
        model = build_model(name, 2, False, 0.0).train()
        head = add_defect_map(model, name, cell)
        model(torch.randn(2, 3, 64, 64))  # a wrong channel count in FEATURE_MAPS fails here
        assert head.take().shape == (2, 1, 64 // cell, 64 // cell)


@pytest.mark.parametrize(("cell", "stage"), [(32, "layer4"), (16, "layer3")])
def test_the_map_trains_the_backbone_and_stays_out_of_the_classifier(cell: int, stage: str) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 2, False, 0.0)
    plain = set(model.state_dict())
    head = add_defect_map(model, "resnet18", cell)
    assert {k for k in model.state_dict() if k.startswith(f"{DEFECT_MAP}.")}
    assert set(without_defect_map(model.state_dict())) == plain  # the saved model: no map
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    maps = defect_maps(
        [torch.tensor([[0.0, 0.0, 16.0, 16.0]]), NONE[0]], torch.ones(2) > 0, 64, CPU
    )
    images = torch.randn(2, 3, 64, 64)
    for _ in range(2):  # the map starts flat (zero weights): its first step moves only itself
        model.train()
        model(images)
        logits = head.take()
        assert logits.shape == (2, 1, 64 // cell, 64 // cell)  # e.g. layer4 at 64 px: 2 x 2
        optimizer.zero_grad()
        defect_map_loss(logits, maps).backward()
        optimizer.step()
    grad = model.get_submodule(stage)[-1].conv2.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    if cell == 16:  # the map never reaches the stage after its feature map
        assert (
            model.layer4[-1].conv2.weight.grad is None
            or not model.layer4[-1].conv2.weight.grad.any()
        )
    assert model.fc[-1].weight.grad is None or not model.fc[-1].weight.grad.any()
    model.eval()
    model(images)
    with pytest.raises(RuntimeError, match="training mode"):
        head.take()  # evaluation never makes a map


def test_a_defect_map_without_any_box_is_a_clear_error() -> None:
    with pytest.raises(ApexLoopError, match=r"train\.defect_map_weight is 1\.0 but no training"):
        _loop([NONE] * 8, mix="none")


def test_a_pasted_defect_gets_its_label_and_its_place_on_the_map() -> None:
    boxes = [_boxed(i) for i in range(8)]
    loop = _loop(boxes, mix="none", defect_paste=1.0)
    batch = next(iter(loop.loader(1)))
    x, y, maps, own = _inputs(loop, batch, *_generators())
    assert maps is not None and torch.equal(y, own)
    # every good image got a defect: it is labelled defective, and its map marks a box of the
    # source's size (16 x 28 px, see _boxed; pasted at whole-pixel offsets). These images
    # are flat, so the pasted pixels, brought to the receiver's level, change nothing.
    assert batch[1].tolist().count(0) == 4 and own.tolist() == [1] * 8
    for i in range(8):
        marked = maps[i, 0] > 0
        assert int(marked.sum()) == 16 * 28
        assert int(marked.any(dim=1).sum()) == 28 and int(marked.any(dim=0).sum()) == 16
    assert torch.equal(x, normalise(batch[0], CPU))


def test_defect_paste_without_any_box_is_an_error_naming_the_param() -> None:
    with pytest.raises(ApexLoopError, match=r"train\.defect_paste is 0\.5 but no training"):
        _loop([NONE] * 8, defect_map_weight=0.0, defect_paste=0.5)


@pytest.mark.parametrize("relabel", [False, True])
def test_a_defect_moved_out_of_view_turns_good_when_relabelling(relabel: bool) -> None:
    """Image 1's only box has no area left (as augmentation leaves a box it moved out of
    view); image 3's is in view. Relabelling makes image 1 good, with a known, empty map."""
    boxes = [_boxed(i) for i in range(8)]
    boxes[1] = (torch.tensor([[SIZE, 2.0, SIZE, 30.0]]), torch.tensor([1]))  # zero width
    loop = _loop(boxes, mix="none", relabel_hidden=relabel)
    batch = next(iter(loop.loader(1)))
    order = [index for _, _, index in loop.draws]
    _, y, maps, own = _inputs(loop, batch, *_generators())
    assert maps is not None and torch.equal(y, own)
    labels = dict(zip(order, own.tolist(), strict=True))
    assert labels == {i: 0 if relabel and i == 1 else i % 2 for i in range(8)}
    first = order.index(1)
    assert not maps[first, 0].any() and maps[first, 1].all()  # no defect pixel, map known
    assert maps[order.index(3), 0].any()
    assert torch.equal(batch[1], torch.tensor([i % 2 for i in order]))  # the batch untouched


def test_relabelling_without_any_box_is_an_error_naming_the_param() -> None:
    with pytest.raises(
        ApexLoopError,
        match=r"train\.relabel_hidden is True but no training.*"
        r"set train\.relabel_hidden: false",
    ):
        _loop([NONE] * 8, defect_map_weight=0.0, relabel_hidden=True)
