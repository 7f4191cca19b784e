"""Tests of pipeline.datasets: the disk decode cache, box scaling, the augmented set, collate."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from pipeline.datasets import (
    AugmentedSet,
    DatasetError,
    EpochDraws,
    cache_key,
    collate,
    decode_images,
    output_names,
    scaled_boxes,
    targets,
)
from pipeline.errors import ApexLoopError
from pipeline.manifest import TaskInfo

SIZE = 16
MULTICLASS = TaskInfo(task="multiclass", classes=("dent", "good", "scratch"), good_class="good")
MULTILABEL = TaskInfo(task="multilabel", classes=("dent", "good", "scratch"), good_class="good")


def write_images(root: Path, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` random PNGs of varied sizes under root/images; manifest-like rows for them."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for index in range(count):
        width, height = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        path = root / "images" / f"{index}.png"
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        rows.append(
            {
                "path": f"images/{index}.png",
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "width": width,
                "height": height,
                "label": "good",
                "labels": [],
                "boxes": [],
                "split": "train",
            }
        )
    return rows


def random_images(count: int, seed: int) -> torch.Tensor:
    """uint8 (count, 3, SIZE, SIZE) from a seeded generator."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (count, 3, SIZE, SIZE), dtype=np.uint8))


# --- cache key and decode cache ---


def test_cache_key_changes_with_rows_order_content_and_size(tmp_path: Path) -> None:
    rows = write_images(tmp_path, 3, seed=0)
    key = cache_key(rows, SIZE)
    assert key == cache_key([dict(row) for row in rows], SIZE)
    changed = [dict(rows[0], sha256="0" * 64), *rows[1:]]
    renamed = [dict(rows[0], path="images/other.png"), *rows[1:]]
    variants = [changed, renamed, rows[::-1], rows[:2]]
    keys = {cache_key(variant, SIZE) for variant in variants} | {cache_key(rows, SIZE * 2)}
    assert key not in keys and len(keys) == 5


def test_disk_cache_equals_memory_and_is_reused_without_decoding(tmp_path: Path) -> None:
    rows = write_images(tmp_path / "data", 5, seed=1)
    cache = tmp_path / "cache"
    memory = decode_images(tmp_path / "data", rows, SIZE, "memory", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about non-writable arrays
        disk = decode_images(tmp_path / "data", rows, SIZE, "disk", cache)
    assert disk.dtype == torch.uint8 and disk.shape == (5, 3, SIZE, SIZE)
    assert torch.equal(disk, memory)
    assert [path.name for path in cache.iterdir()] == [f"{cache_key(rows, SIZE)}.u8"]
    # the sources are gone or corrupt: only the cache file can give the images now
    for row in rows[:3]:
        (tmp_path / "data" / row["path"]).write_bytes(b"not a png")
    (tmp_path / "data" / rows[4]["path"]).unlink()
    with pytest.raises(ApexLoopError):
        decode_images(tmp_path / "data", rows, SIZE, "memory", None)
    assert torch.equal(decode_images(tmp_path / "data", rows, SIZE, "disk", cache), memory)


def test_disk_cache_view_is_copy_on_write(tmp_path: Path) -> None:
    rows = write_images(tmp_path / "data", 2, seed=2)
    cache = tmp_path / "cache"
    first = decode_images(tmp_path / "data", rows, SIZE, "disk", cache)
    expected = first.clone()
    first.fill_(0)
    assert torch.equal(decode_images(tmp_path / "data", rows, SIZE, "disk", cache), expected)


def test_failed_decode_leaves_no_file_under_the_final_name(tmp_path: Path) -> None:
    rows = write_images(tmp_path / "data", 4, seed=3)
    (tmp_path / "data" / rows[2]["path"]).write_bytes(b"truncated")
    cache = tmp_path / "cache"
    with pytest.raises(ApexLoopError, match=rows[2]["path"]):
        decode_images(tmp_path / "data", rows, SIZE, "disk", cache)
    assert list(cache.iterdir()) == []  # neither the final file nor the temp file


def test_stale_temp_and_truncated_cache_files_are_not_used(tmp_path: Path) -> None:
    rows = write_images(tmp_path / "data", 3, seed=4)
    cache = tmp_path / "cache"
    cache.mkdir()
    key = cache_key(rows, SIZE)
    (cache / f".{key}.u8.killed.tmp").write_bytes(b"\xff" * (3 * 3 * SIZE * SIZE))
    (cache / f"{key}.u8").write_bytes(b"\xff" * 100)  # a half file (written by other code)
    disk = decode_images(tmp_path / "data", rows, SIZE, "disk", cache)
    assert torch.equal(disk, decode_images(tmp_path / "data", rows, SIZE, "memory", None))
    assert (cache / f"{key}.u8").stat().st_size == 3 * 3 * SIZE * SIZE


def test_disk_mode_needs_a_cache_folder_and_modes_are_checked(tmp_path: Path) -> None:
    rows = write_images(tmp_path, 1, seed=5)
    with pytest.raises(DatasetError, match="cache folder"):
        decode_images(tmp_path, rows, SIZE, "disk", None)
    with pytest.raises(DatasetError, match="decode_cache"):
        decode_images(tmp_path, rows, SIZE, "ram", tmp_path / "cache")


def test_disk_mode_with_no_rows(tmp_path: Path) -> None:
    images = decode_images(tmp_path, [], SIZE, "disk", tmp_path / "cache")
    assert images.dtype == torch.uint8 and images.shape == (0, 3, SIZE, SIZE)


# --- boxes ---


def box(x0: float, y0: float, x1: float, y1: float, label: str) -> dict[str, Any]:
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "label": label}


def test_scaled_boxes_scale_each_axis_and_index_the_outputs() -> None:
    rows = [
        {"path": "a.png", "width": 200, "height": 100, "boxes": [box(20, 10, 100, 50, "scratch")]},
        {"path": "b.png", "width": 64, "height": 32, "boxes": []},
        {"path": "c.png", "width": 50, "height": 400, "boxes": [box(0, 0, 50, 400, "dent")] * 2},
    ]
    multiclass = scaled_boxes(rows, MULTICLASS, 64)
    assert torch.allclose(multiclass[0][0], torch.tensor([[6.4, 6.4, 32.0, 32.0]]))
    assert multiclass[0][1].tolist() == [MULTICLASS.classes.index("scratch")]
    assert multiclass[1][0].shape == (0, 4) and multiclass[1][1].shape == (0,)
    assert torch.equal(multiclass[2][0], torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 2))
    assert multiclass[0][0].dtype == torch.float32 and multiclass[0][1].dtype == torch.int64
    multilabel = scaled_boxes(rows, MULTILABEL, 64)
    assert multilabel[0][1].tolist() == [MULTILABEL.defect_classes.index("scratch")]
    assert multilabel[2][1].tolist() == [MULTILABEL.defect_classes.index("dent")] * 2


@pytest.mark.parametrize(("info", "label"), [(MULTICLASS, "crack"), (MULTILABEL, "good")])
def test_scaled_boxes_reject_a_label_the_model_does_not_output(info: TaskInfo, label: str) -> None:
    rows = [
        {"path": "ok.png", "width": 10, "height": 10, "boxes": [box(0, 0, 5, 5, "dent")]},
        {"path": "bad/x.png", "width": 10, "height": 10, "boxes": [box(0, 0, 5, 5, label)]},
    ]
    with pytest.raises(DatasetError, match=rf"bad/x\.png.*'{label}'"):
        scaled_boxes(rows, info, 32)


# --- the augmented set ---


def augmented_set(seed: int = 9, count: int = 6) -> AugmentedSet:
    """A set of random images, each with one box, under flips, rotation and colour jitter."""
    transform = v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(20.0),
            v2.ColorJitter(0.4, 0.4, 0.4),
            v2.ClampBoundingBoxes(clamping_mode="hard"),
        ]
    )
    boxes = [
        (torch.tensor([[1.0, 2.0, 8.0, 9.0]]), torch.tensor([index % 2])) for index in range(count)
    ]
    labels = torch.arange(count, dtype=torch.int64)  # target = image index, to check the order
    return AugmentedSet(random_images(count, seed=7), labels, boxes, transform, seed)


def same_sample(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def draws(count: int, epoch: int, order: list[int]) -> EpochDraws:
    sampler = EpochDraws(count)
    sampler.set_order(epoch, torch.tensor(order, dtype=torch.int64))
    return sampler


def test_sample_depends_only_on_seed_epoch_and_position() -> None:
    first, second = augmented_set(), augmented_set()
    order = [3, 1, 3, 0, 5]
    keys = list(draws(6, 2, order))
    assert keys == [(2, 0, 3), (2, 1, 1), (2, 2, 3), (2, 3, 0), (2, 4, 5)]
    assert [int(first[key][1]) for key in keys] == order
    # any visiting order gives the same samples
    for position in [4, 0, 2, 1, 3]:
        assert same_sample(first[keys[position]], second[keys[position]])
        assert same_sample(first[keys[position]], first[keys[position]])
    later = list(draws(6, 3, order))
    assert not all(same_sample(first[a], first[b]) for a, b in zip(keys, later, strict=True))
    other_seed = augmented_set(seed=10)
    assert not all(same_sample(first[key], other_seed[key]) for key in keys)


def test_ranks_draw_positions_of_one_whole_draw() -> None:
    sampler = EpochDraws(6)
    sampler.set_order(1, torch.tensor([4, 2, 0], dtype=torch.int64), rank=1, ranks=2)
    assert list(sampler) == [(1, 1, 4), (1, 3, 2), (1, 5, 0)] and len(sampler) == 3


def test_repeated_visits_of_one_image_are_augmented_differently() -> None:
    dataset = augmented_set()
    images = [dataset[key][0] for key in draws(6, 0, [0] * 8)]
    assert len({image.numpy().tobytes() for image in images}) > 1
    assert all(image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE) for image in images)


def test_samples_never_write_to_or_share_the_sets_tensors() -> None:
    images = random_images(2, seed=1)
    boxes = [(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([1]))] * 2
    dataset = AugmentedSet(images, torch.tensor([0, 1]), boxes, None, seed=0)
    image, target, sample_boxes, box_labels = dataset[(0, 0, 1)]
    assert torch.equal(image, images[1]) and torch.equal(sample_boxes, boxes[1][0])
    for tensor in (image, target, sample_boxes, box_labels):
        tensor.zero_()
    assert torch.equal(images, random_images(2, seed=1))
    assert torch.equal(dataset.targets, torch.tensor([0, 1]))
    assert dataset.boxes[1][0].tolist() == [[0.0, 0.0, 4.0, 4.0]] and dataset.boxes[1][1] == 1


def same_batches(first: list[Any], second: list[Any]) -> bool:
    return len(first) == len(second) and all(
        torch.equal(im_a, im_b)
        and torch.equal(t_a, t_b)
        and all(torch.equal(x, y) for x, y in zip(b_a + l_a, b_b + l_b, strict=True))
        for (im_a, t_a, b_a, l_a), (im_b, t_b, b_b, l_b) in zip(first, second, strict=True)
    )


def test_dataloader_batches_do_not_depend_on_worker_count() -> None:
    dataset = augmented_set(count=6)
    sampler = draws(6, 1, [0, 2, 2, 5, 1, 2, 4, 3, 0, 5])

    def batches(workers: int) -> list[Any]:
        loader = DataLoader(
            dataset, sampler=sampler, batch_size=3, num_workers=workers, collate_fn=collate
        )
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 4
    assert same_batches(serial, parallel)


def test_workers_kept_between_epochs_serve_each_epochs_order() -> None:
    dataset = augmented_set(count=6)
    sampler = EpochDraws(6)
    kept = DataLoader(
        dataset,
        sampler=sampler,
        batch_size=2,
        num_workers=2,
        persistent_workers=True,
        collate_fn=collate,
    )
    orders = [[5, 4, 3, 2], [0, 0, 1, 1, 2, 2]]
    for epoch, order in enumerate(orders, start=1):
        sampler.set_order(epoch, torch.tensor(order, dtype=torch.int64))
        fresh = DataLoader(
            dataset, sampler=draws(6, epoch, order), batch_size=2, collate_fn=collate
        )
        assert same_batches(list(kept), list(fresh))


def test_collate_stacks_images_and_targets_and_lists_boxes() -> None:
    rows = [{"labels": ["dent"]}, {"labels": []}, {"labels": ["dent", "scratch"]}]
    hot = targets(rows, MULTILABEL)  # (3, defects)
    boxes = [
        (torch.zeros((n, 4)), torch.zeros(n, dtype=torch.int64)) for n in (1, 0, 2)
    ]  # box counts differ per image
    dataset = AugmentedSet(random_images(3, seed=2), hot, boxes, None, seed=0)
    images, batch_targets, batch_boxes, batch_labels = collate(
        [dataset[(0, p, p)] for p in range(3)]
    )
    assert images.dtype == torch.uint8 and images.shape == (3, 3, SIZE, SIZE)
    assert torch.equal(batch_targets, hot)
    assert batch_targets.shape == (3, len(output_names(MULTILABEL)))
    assert [b.shape[0] for b in batch_boxes] == [1, 0, 2]
    assert [label.shape[0] for label in batch_labels] == [1, 0, 2]


def test_set_order_and_construction_are_checked() -> None:
    dataset, sampler = augmented_set(count=4), EpochDraws(4)
    with pytest.raises(DatasetError, match="outside"):
        sampler.set_order(0, torch.tensor([0, 4], dtype=torch.int64))
    with pytest.raises(DatasetError, match="int64"):
        sampler.set_order(0, torch.tensor([0.0, 1.0]))
    with pytest.raises(IndexError):
        dataset[(0, 0, 4)]
    with pytest.raises(DatasetError, match="one of each"):
        AugmentedSet(random_images(2, seed=0), torch.zeros(3), [], None, seed=0)
