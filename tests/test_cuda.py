"""The training loop on a CUDA GPU: autocast in bf16 and in fp16 (with loss scaling),
channels_last batches from pinned memory, augmentation per batch on the GPU (train.augment_on:
auto), defect-aware CutMix on the GPU, validation, and a run resumed from the state a GPU run
saved. Skipped where no GPU is visible (CI has none); on a
GPU machine: `pytest tests/test_cuda.py`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO

from pipeline.distributed import Process
from pipeline.manifest import TaskInfo
from pipeline.models import build_model, place_model
from pipeline.params import TrainParams, load_section
from pipeline.training import EpochLog, FitResult, Job, Loop, Side, fit
from pipeline.transforms import BatchAugment

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    # fp16's loss scaler skips the steps whose gradients overflowed; the schedule must too
    pytest.mark.filterwarnings("error:Detected call of `lr_scheduler.step()`"),
]

CUDA = torch.device("cuda")
INFO = TaskInfo("multiclass", ("good", "band", "stripe"), "good")
SIZE = 32


def bands(count: int, seed: int) -> Side:
    """A task a small CNN learns in a few epochs: noise (good), a bright horizontal band
    (band) or a bright vertical one (stripe) at a random place, the band's box recorded."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 90, (count, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count) % 3
    boxes = []
    for image, label in zip(images, labels.tolist(), strict=True):
        start = int(torch.randint(0, SIZE - 8, (1,), generator=generator))
        if label == 0:
            boxes.append((torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64)))
            continue
        if label == 1:
            image[:, start : start + 8, :] = 230
            box = [0.0, start, SIZE, start + 8]
        else:
            image[:, :, start : start + 8] = 230
            box = [start, 0.0, start + 8, SIZE]
        boxes.append((torch.tensor([box], dtype=torch.float32), torch.tensor([label])))
    return Side(images, labels, boxes)


def settings(**changes: Any) -> TrainParams:
    base = load_section(REPO / "params.yaml", "train", TrainParams)
    return base.model_copy(
        update={
            "model": "resnet18",
            "image_size": SIZE,
            "epochs": 6,
            "batch_size": 32,
            "lr": 0.003,
            "device": "cuda",
            **changes,
        }
    )


def train(
    params: TrainParams, state: Path | None = None, on_epoch: Callable[[EpochLog], None] = print
) -> FitResult:
    torch.manual_seed(0)
    model = place_model(build_model(params.model, 3, False, params.dropout), CUDA)
    job = Job(INFO, CUDA, Process(0, 1), state, "gpu-test", on_epoch)
    return fit(model, bands(192, 1), bands(96, 2), params, job)


@pytest.mark.parametrize(
    ("amp", "dtype", "scaled"),
    [("bf16", torch.bfloat16, False), ("fp16", torch.float16, True), ("off", None, False)],
)
def test_each_precision_learns_the_task_on_the_gpu(
    amp: str, dtype: torch.dtype | None, scaled: bool
) -> None:
    params = settings(amp=amp, mix="defect_cutmix", mix_prob=0.5, sampler="weighted")
    loop = Loop(
        place_model(build_model("resnet18", 3, False, 0.2), CUDA),
        bands(8, 0),
        bands(8, 0),
        params,
        Job(INFO, CUDA, Process(0, 1), None, "", lambda entry: None),
    )
    assert loop.amp is dtype
    assert loop.scaler.is_enabled() is scaled  # loss scaling is for fp16 only
    result = train(params)
    assert len(result.history) == 6
    assert all(torch.isfinite(torch.tensor(e.train_loss)) for e in result.history)
    assert result.best.val_accuracy >= 0.9, result.history
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert all(t.device.type == "cpu" for t in result.state.values())  # checkpoint-ready


def test_batch_augmentation_on_the_gpu_gives_what_it_gives_on_the_cpu() -> None:
    augment = BatchAugment.from_params(
        settings(crop_scale_min=0.7, rotate_degrees=20.0, color_jitter=0.3)
    )
    assert augment is not None
    side = bands(16, 3)
    boxes = [found for found, _ in side.boxes]
    on_cpu = augment(side.images, boxes, torch.Generator().manual_seed(4))
    on_gpu = augment(side.images.to(CUDA), boxes, torch.Generator().manual_seed(4))
    assert on_gpu[0].device.type == "cuda"
    # one bilinear warp in float32 either way: values differ by rounding only
    assert torch.allclose(on_gpu[0].cpu(), on_cpu[0], atol=0.5)
    assert all(torch.equal(a, b) for a, b in zip(on_gpu[1], on_cpu[1], strict=True))


class Crash(Exception):
    pass


def test_a_run_resumes_from_the_state_a_gpu_run_saved(tmp_path: Path) -> None:
    """fp16: the loss scaler's state travels with the optimiser's through the checkpoint."""
    state, params, seen = tmp_path / "last.pt", settings(epochs=3, amp="fp16"), []

    def crash_in_epoch_two(entry: EpochLog) -> None:
        seen.append(entry)
        if entry.epoch == 2:
            raise Crash  # before epoch 2's state is saved, as a kill would be

    with pytest.raises(Crash):
        train(params, state, crash_in_epoch_two)
    assert state.is_file()
    resumed = train(params, state)
    assert resumed.resumed_after == 1
    assert [e.epoch for e in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == seen[0]  # the saved epoch, replayed
