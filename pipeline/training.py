"""The training loop: sampler, augmentation and mixing feed batches; validation every epoch; the
best epoch's weights kept; the whole state saved after each epoch so a killed run resumes."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline import distributed
from pipeline.checkpoints import load_state, save_state
from pipeline.datasets import AugmentedSet, EpochDraws, collate, good_rows, output_names
from pipeline.defect_paste import paste_defects
from pipeline.distributed import Process
from pipeline.errors import ApexLoopError
from pipeline.inference import normalise, predict_logits, score_metrics, to_scores
from pipeline.losses import build_loss, class_weights
from pipeline.manifest import TaskInfo
from pipeline.mixing import MixConfig, mix_batch, soft_targets
from pipeline.models import add_defect_map, without_defect_map
from pipeline.params import TrainParams
from pipeline.samplers import (
    ShuffleEpochSampler,
    WeightedEpochSampler,
    epoch_generator,
    sample_weights,
    upsample_indices,
)
from pipeline.transforms import BatchAugment, build_augment, drop_hidden_defects

log = logging.getLogger(__name__)

MIX_STREAM = 1_000_003  # offsets the mixing draws' seed from the sampler's
AUGMENT_STREAM = 2_000_003  # ... and the batch augmentation's (train.augment_on: device)
PASTE_STREAM = 3_000_017  # ... and defect copy-paste's (train.defect_paste)


class DivergedError(ApexLoopError):
    """The loss became NaN or infinite."""


_NO_BOXES = (torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64))  # (0, 4), labels (0,)


@dataclass(frozen=True)
class Side:
    """One side of the split, decoded: images uint8 (N, 3, S, S), targets (int64 (N,) or
    multi-hot float (N, L)), and per image its boxes on the S x S canvas with output indices."""

    images: torch.Tensor
    targets: torch.Tensor
    boxes: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class EpochLog:
    """One epoch's curves (no timings: the history must be reproducible). Train figures come
    from the epoch's augmented batches, scored against each image's own label; gap is train
    minus val accuracy (memorisation shows as a growing gap)."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    train_macro_f1: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    val_miss_rate: float | None
    val_overkill_rate: float | None
    gap: float


@dataclass(frozen=True)
class Job:
    """Where and how this process trains: the task, device, its rank, the resumable state's
    file (None: no resuming) and fingerprint, and a callback for each finished epoch."""

    info: TaskInfo
    device: torch.device
    process: Process
    state_path: Path | None
    fingerprint: str
    on_epoch: Callable[[EpochLog], None]


@dataclass(frozen=True)
class FitResult:
    """The best epoch's weights (CPU state dict) and log, the whole history, and the epoch the
    run resumed after (0: started afresh)."""

    state: dict[str, Any]
    best: EpochLog
    history: list[EpochLog]
    resumed_after: int


def sample_classes(targets: torch.Tensor, task: str) -> list[list[int]]:
    """Class indices of each sample: its class (multiclass, targets (N,)); its defects, or
    index L for the good class when it has none (multilabel, targets (N, L))."""
    if task == "multiclass":
        return [[int(label)] for label in targets.tolist()]
    good = targets.shape[1]
    return [[i for i, v in enumerate(row) if v > 0.5] or [good] for row in targets.tolist()]


def build_criterion(
    params: TrainParams, info: TaskInfo, targets: torch.Tensor, device: torch.device
) -> nn.Module:
    """The loss of params.loss, with class weights from the training targets' counts when
    params.class_weight_damping > 0 (multilabel: positives per defect)."""
    names = output_names(info)
    weights = None
    if params.class_weight_damping > 0:
        counts = (
            torch.bincount(targets, minlength=len(names))
            if info.task == "multiclass"
            else targets.sum(dim=0).round().long()
        )
        weights = class_weights(counts.tolist(), names, params.class_weight_damping)
    criterion = build_loss(
        info.task,
        params.loss,
        names,
        gamma=params.focal_gamma,
        alpha=params.focal_alpha,
        label_smoothing=params.label_smoothing,
        weights=weights,
    )
    return criterion.to(device)


def balance(
    targets: torch.Tensor, params: TrainParams, info: TaskInfo, process: Process
) -> tuple[torch.Tensor, WeightedEpochSampler | ShuffleEpochSampler]:
    """The training pool as indices into the side (rare images repeated when
    params.upsample_target_ratio > 0) and this rank's epoch sampler over the pool: shuffled,
    or weighted towards rare classes (params.sampler)."""
    classes = sample_classes(targets, info.task)
    n_classes = len(output_names(info)) + (info.task == "multilabel")  # + good (multilabel)
    pool = torch.arange(len(classes))
    if params.upsample_target_ratio > 0:
        keep = upsample_indices(
            classes, n_classes, params.upsample_target_ratio, params.upsample_max_replications
        )
        pool = torch.from_numpy(keep).long()
        classes = [classes[i] for i in keep.tolist()]
    rank, world = process.rank, process.world_size
    if params.sampler == "weighted":
        weights = sample_weights(classes, n_classes, params.sampler_mode, params.sampler_beta)
        return pool, WeightedEpochSampler(weights, len(classes), params.seed, rank, world)
    return pool, ShuffleEpochSampler(len(classes), params.seed, rank, world)


def build_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum, over the trainable (unfrozen) parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            trainable,
            lr=params.lr,
            momentum=params.momentum,
            nesterov=params.momentum > 0,
            weight_decay=params.weight_decay,
        )
    return torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch. cosine: linear warm-up from lr/25 over params.warmup_epochs,
    then cosine decay to 0. onecycle: torch's OneCycleLR rising for params.warmup_epochs (0:
    its default 30% of the run)."""
    total = params.epochs * steps_per_epoch
    warmup = round(params.warmup_epochs * steps_per_epoch)
    if params.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=params.lr, total_steps=total, pct_start=warmup / total or 0.3
        )

    def factor(step: int) -> float:
        if step < warmup:
            return 1 / 25 + (1 - 1 / 25) * step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def monitored(entry: EpochLog, monitor: str) -> tuple[float, float]:
    """Sort key of an epoch, larger is better: validation macro-F1, or the miss rate (lower is
    better) with macro-F1 breaking ties (several epochs often miss nothing)."""
    if monitor == "macro_f1":
        return (entry.val_macro_f1, 0.0)
    if entry.val_miss_rate is None:
        raise ApexLoopError(
            "train.monitor is miss_rate but the val side has no defective images to miss; "
            "use train.monitor: macro_f1 or a split with defects on val"
        )
    return (-entry.val_miss_rate, entry.val_macro_f1)


class Loop:
    """The per-run objects of fit(): model (DDP-wrapped when distributed), optimiser,
    schedule, optional EMA, AMP scaler, criterion, data and mixing."""

    def __init__(
        self, model: nn.Module, train: Side, val: Side, params: TrainParams, job: Job
    ) -> None:
        self.params, self.job, self.val = params, job, val
        for key, off in (("defect_map_weight", 0), ("defect_paste", 0), ("relabel_hidden", False)):
            if getattr(params, key) != off and not any(len(found) for found, _ in train.boxes):
                raise ApexLoopError(
                    f"train.{key} is {getattr(params, key)} but no training image has a defect "
                    "box: give the defects' boxes (ingest.masks, ingest.boxes_column or VOC "
                    f"files) or set train.{key}: {str(off).lower()}"
                )
        self.defect_map = (
            add_defect_map(model, params.model, params.defect_map_cell).to(job.device)
            if params.defect_map_weight
            else None
        )
        self.model = distributed.wrap(model, job.process, job.device)
        self.pool, self.sampler = balance(train.targets, params, job.info, job.process)
        # Boxes matter only to defect-aware CutMix, the defect map, defect pasting and
        # relabelling hidden defects: without them the samples carry none, which spares
        # augmenting them (pipeline.transforms.augment: a third of its time at 128 px).
        carried = (
            params.mix == "defect_cutmix"
            or self.defect_map is not None
            or params.defect_paste > 0
            or params.relabel_hidden
        )
        boxes = train.boxes if carried else [_NO_BOXES] * len(train.boxes)
        on_device = augment_place(params.augment_on, job.device) == "device"
        self.augment = BatchAugment.from_params(params) if on_device else None
        per_image = None if on_device else build_augment(params)
        data = AugmentedSet(train.images, train.targets, boxes, per_image, params.seed)
        self.draws = EpochDraws(len(train.images))
        self.criterion = build_criterion(params, job.info, train.targets, job.device)
        self.optimizer = build_optimizer(model, params)
        # A lone last sample is left out of the epoch: batch norm cannot train on a batch of
        # one at small image sizes (one value per channel). Each epoch draws a new order, so
        # it is not the same image every epoch.
        full, rest = divmod(len(self.sampler), params.batch_size)
        self.drop_last = rest == 1 and full > 0
        self.steps = full + (rest > 0 and not self.drop_last)
        # one DataLoader for the whole run: its workers (if any) stay up between epochs
        cores = len(os.sched_getaffinity(0))  # a container's or taskset's limit, not the machine's
        workers = loader_workers(
            params.num_workers, job.device, cores, distributed.ranks_on_this_machine()
        )
        self.batches: DataLoader[Any] = DataLoader(
            data,
            sampler=self.draws,
            batch_size=params.batch_size,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=self.drop_last,
            pin_memory=job.device.type == "cuda",
            generator=torch.Generator().manual_seed(params.seed),  # not the global RNG
        )
        self.scheduler = build_scheduler(self.optimizer, params, self.steps)
        decay = params.ema_decay
        self.ema = (
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
            if decay
            else None
        )
        self.amp = amp_dtype(job.device, params.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp is torch.float16)
        self.mix = MixConfig.from_params(params)
        names = output_names(job.info)
        self.good = names.index(job.info.good_class) if job.info.task == "multiclass" else None

    def evaluated(self) -> nn.Module:
        """The weights that are validated and saved: the EMA when on, else the model."""
        return self.ema.module if self.ema is not None else distributed.unwrap(self.model)

    def state(self) -> dict[str, Any]:
        return {
            "model": distributed.unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),  # dropout draws from torch's global generator
        }

    def restore(self, state: dict[str, Any]) -> None:
        distributed.unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])

    def loader(self, epoch: int) -> DataLoader[Any]:
        """This rank's batches of the epoch (order from (seed, epoch); augmentation seeded
        by position, so worker count does not change them)."""
        self.sampler.set_epoch(epoch)
        process = self.job.process
        order = self.pool[torch.tensor(list(self.sampler))]
        self.draws.set_order(epoch, order, process.rank, process.world_size)
        return self.batches


def augment_place(setting: str, device: torch.device) -> str:
    """Where train-time augmentation runs for train.augment_on: "loader" (per image, Pillow,
    in the DataLoader) or "device" (per batch, tensor ops where the model trains). auto: on a
    GPU the device (per-image work in the workers caps the loop far below the GPU's step rate,
    bench/train_speed.py), on a CPU the loader (the trained default stays as it was)."""
    if setting != "auto":
        return setting
    return "device" if device.type == "cuda" else "loader"


def rank_generator(stream: int, seed: int, epoch: int, rank: int) -> torch.Generator:
    """One rank's draws of an epoch for a per-batch random step (`stream`: AUGMENT_STREAM,
    PASTE_STREAM): the same (stream, seed, epoch, rank) always gives the same draws, and ranks
    (each with its own shard of images) draw differently."""
    entropy = np.random.SeedSequence([seed, stream, epoch, rank]).generate_state(1)
    return torch.Generator().manual_seed(int(entropy[0]))


def loader_workers(setting: int | str, device: torch.device, cores: int, ranks_here: int) -> int:
    """DataLoader worker processes for train.num_workers: a number as it is; auto = none on a
    CPU (the step's threads already use every core: workers would only compete with them,
    bench/train_speed.py), and on a GPU one per core of this rank's share of the machine
    (`cores` / `ranks_here` training processes) less one for the main process, at most 8."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    return max(0, min(8, cores // max(1, ranks_here) - 1))


def amp_dtype(device: torch.device, setting: str) -> torch.dtype | None:
    """The autocast dtype of train.amp on CUDA (auto: bf16 where the GPU supports it, else
    fp16, which also turns on loss scaling); None (float32) for `off` and on CPU."""
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "bf16" and not torch.cuda.is_bf16_supported():
        raise ApexLoopError(
            f"train.amp is 'bf16' but {torch.cuda.get_device_name(device)} does not support "
            "bfloat16; use auto or fp16"
        )
    return torch.bfloat16 if setting == "bf16" else torch.float16


def defect_maps(
    boxes: list[torch.Tensor], known: torch.Tensor, size: int, device: torch.device
) -> torch.Tensor:
    """float32 (B, 2, S, S) on `device`: channel 0 is 1 on the pixels that any of image b's
    defect boxes (XYXY on the S x S canvas) overlaps, channel 1 is 1 where image b's map is
    known (`known` (B,) bool: a defective image without boxes has none)."""
    edges = torch.arange(size, device=device, dtype=torch.float32)  # pixel p spans [p, p + 1)
    maps = torch.zeros(len(boxes), 2, size, size, device=device)
    maps[:, 1] = known.to(device, torch.float32)[:, None, None]
    for index, found in enumerate(boxes):
        if len(found):
            x0, y0, x1, y1 = found.to(device, torch.float32).unbind(1)  # (n,) each
            rows = (edges < y1[:, None]) & (edges + 1 > y0[:, None])  # (n, S)
            columns = (edges < x1[:, None]) & (edges + 1 > x0[:, None])  # (n, S)
            maps[index, 0] = (rows[:, :, None] & columns[:, None, :]).any(0)
    return maps


def defect_map_loss(logits: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the defect map's cells (B, 1, h, w) against `maps` (B, 2, S, S,
    see defect_maps; mixed like the images): a cell is a defect where any of its pixels is,
    and counts by the share of its pixels whose map is known."""
    cells = (logits.shape[-2], logits.shape[-1])
    target = F.adaptive_max_pool2d(maps[:, :1], cells)
    known = F.adaptive_avg_pool2d(maps[:, 1:], cells)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=known, reduction="sum")
    return loss / known.sum().clamp_min(1.0)


def _known_maps(targets: torch.Tensor, boxes: list[torch.Tensor], good: int | None) -> torch.Tensor:
    """(B,) bool: whether an image's defect map is known: it has boxes, or it is good."""
    return good_rows(targets, good).cpu() | torch.tensor([len(found) > 0 for found in boxes])


def _inputs(
    loop: Loop,
    batch: tuple[Any, ...],
    mixing: torch.Generator,
    augmenting: torch.Generator,
    pasting: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Normalised images, the loss targets, (with a defect map) the defect maps of a batch
    (see defect_maps) and each image's own label: augmented on the device when
    train.augment_on says so, relabelled per train.relabel_hidden, given defects per
    train.defect_paste, then mixed per params.mix: the maps ride along as extra channels, so
    that CutMix pastes and MixUp blends them with their pixels."""
    images, targets, boxes, labels = batch
    device, info = loop.job.device, loop.job.info
    if loop.augment is not None:
        images, boxes = loop.augment(images.to(device, non_blocking=True), boxes, augmenting)
    if loop.params.relabel_hidden:
        targets = drop_hidden_defects(targets, boxes, labels, loop.good)
    if loop.params.defect_paste:
        pasted = paste_defects(
            images, targets, boxes, labels, loop.good, loop.params.defect_paste, pasting
        )
        images, targets = pasted.images, pasted.targets
        boxes, labels = pasted.boxes, pasted.box_labels
    x = normalise(images, device)  # (B, 3, S, S) float, channels_last
    channels = x.shape[1]
    if loop.defect_map is not None:
        known = _known_maps(targets, boxes, loop.good)
        x = torch.cat([x, defect_maps(boxes, known, x.shape[-1], device)], dim=1)
    if loop.mix.mode == "none":
        y = targets.to(device, non_blocking=True)
    else:
        # targets stay on the host for mixing: reading them back from a GPU would stall it
        soft = soft_targets(targets, info.task, len(output_names(info)))
        mixed = mix_batch(x, soft, boxes, labels, info.task, loop.good, loop.mix, mixing)
        x, y = mixed.images, mixed.targets.to(device, non_blocking=True)
    maps = x[:, channels:] if loop.defect_map is not None else None
    return x[:, :channels].contiguous(memory_format=torch.channels_last), y, maps, targets


def _step(
    loop: Loop, x: torch.Tensor, y: torch.Tensor, maps: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and optimiser step on one batch (with `maps`, the defect map's loss
    weighted by train.defect_map_weight joins the classifier's); returns the classifier's
    loss and the logits, on the device: reading them there would make the host wait for the
    GPU at every step."""
    with torch.autocast(loop.job.device.type, dtype=loop.amp, enabled=loop.amp is not None):
        logits = loop.model(x)
        loss = loop.criterion(logits.float(), y)
    total = loss
    if loop.defect_map is not None and maps is not None:
        total = loss + loop.params.defect_map_weight * defect_map_loss(loop.defect_map.take(), maps)
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scaler.scale(total).backward()
    if loop.params.grad_clip:
        loop.scaler.unscale_(loop.optimizer)
        nn.utils.clip_grad_norm_(loop.model.parameters(), loop.params.grad_clip)
    scale = loop.scaler.get_scale()  # fp16 only: reads the GPU (1.0 without loss scaling)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    if loop.scaler.get_scale() >= scale:  # fp16: a lowered scale means the step was skipped
        loop.scheduler.step()
    if loop.ema is not None:
        loop.ema.update_parameters(distributed.unwrap(loop.model))
    return loss.detach(), logits.detach()


def train_epoch(loop: Loop, epoch: int) -> tuple[float, dict[str, Any]]:
    """One epoch on this rank's shard; returns the mean loss and the metrics of its batches
    scored against each image's own label (after pasting, before mixing). A loss that became
    NaN or infinite in any batch stops the run once the epoch is done (the host reads the
    losses once)."""
    loop.model.train()
    mixing = epoch_generator(loop.params.seed + MIX_STREAM, epoch)
    rank = loop.job.process.rank
    augmenting = rank_generator(AUGMENT_STREAM, loop.params.seed, epoch, rank)
    pasting = rank_generator(PASTE_STREAM, loop.params.seed, epoch, rank)
    losses, all_logits, all_targets = [], [], []
    batches = tqdm(
        loop.loader(epoch),
        desc=f"epoch {epoch}/{loop.params.epochs}",
        unit="batch",
        leave=False,
        disable=None if loop.job.process.is_main else True,  # None: only on a terminal
    )
    for batch in batches:
        x, y, maps, own = _inputs(loop, batch, mixing, augmenting, pasting)
        loss, logits = _step(loop, x, y, maps)
        losses.append(loss)
        all_logits.append(logits)
        all_targets.append(own)
    per_batch = torch.stack(losses).double().cpu()  # (steps,)
    broken = torch.nonzero(~torch.isfinite(per_batch)).flatten().tolist()
    if broken:
        raise DivergedError(
            f"training loss became {per_batch[broken[0]].item()} at batch {broken[0]} of epoch "
            f"{epoch}; lower train.lr (now {loop.params.lr})"
        )
    sizes = torch.tensor([len(targets) for targets in all_targets], dtype=torch.float64)
    mean_loss = float((per_batch * sizes).sum() / max(float(sizes.sum()), 1.0))
    scores = to_scores(torch.cat(all_logits).float().cpu(), loop.job.info.task)
    return mean_loss, score_metrics(scores, torch.cat(all_targets), loop.job.info, 0.5)


def _epoch_log(loop: Loop, epoch: int, train_loss: float, train: dict[str, Any]) -> EpochLog:
    """Validate the evaluated weights and put the epoch's figures together."""
    distributed.sync_buffers(loop.model, loop.job.process)
    device, val = loop.job.device, loop.val
    logits = predict_logits(loop.evaluated(), val.images, loop.params.batch_size, device)
    val_loss = loop.criterion(logits.to(device), val.targets.to(device)).item()
    if not math.isfinite(val_loss):
        raise DivergedError(
            f"validation loss became {val_loss} after epoch {epoch} (the weights blew up); "
            f"lower train.lr (now {loop.params.lr})"
        )
    metrics = score_metrics(to_scores(logits, loop.job.info.task), val.targets, loop.job.info, 0.5)
    return EpochLog(
        epoch=epoch,
        lr=loop.optimizer.param_groups[0]["lr"],
        train_loss=round(train_loss, 5),
        train_accuracy=train["accuracy"],
        train_macro_f1=train["macro_f1"] or 0.0,
        val_loss=round(val_loss, 5),
        val_accuracy=metrics["accuracy"],
        val_macro_f1=metrics["macro_f1"] or 0.0,
        val_miss_rate=metrics["miss_rate"],
        val_overkill_rate=metrics["overkill_rate"],
        gap=round(train["accuracy"] - metrics["accuracy"], 4),
    )


def _cpu_copy(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value.detach().cpu().clone() for key, value in state.items()}


def _resume(loop: Loop) -> tuple[list[EpochLog], tuple[EpochLog, dict[str, Any]] | None, bool]:
    """History, best (log, weights) and whether training had finished, from the saved state
    of this same run if there is one; empty otherwise."""
    job = loop.job
    state = load_state(job.state_path, job.fingerprint) if job.state_path else None
    if state is None:
        return [], None, False
    loop.restore(state["loop"])
    history = [EpochLog(**entry) for entry in state["history"]]
    log.info("resuming after epoch %d from %s", len(history), job.state_path)
    best = (EpochLog(**state["best_log"]), state["best_state"])
    return history, best, state["finished"]


def _save(loop: Loop, history: list[EpochLog], best: tuple[EpochLog, Any], done: bool) -> None:
    if loop.job.state_path is None or not loop.job.process.is_main:
        return
    state = {
        "fingerprint": loop.job.fingerprint,
        "params": loop.params.model_dump(),
        "classes": list(loop.job.info.classes),
        "loop": loop.state(),
        "history": [asdict(entry) for entry in history],
        "best_log": asdict(best[0]),
        "best_state": best[1],
        "finished": done,
    }
    save_state(loop.job.state_path, state)


def fit(model: nn.Module, train: Side, val: Side, params: TrainParams, job: Job) -> FitResult:
    """Train for up to params.epochs, stopping once params.patience epochs (0: never) bring no
    improvement of params.monitor; resume from job.state_path when it holds this run's state."""
    loop = Loop(model, train, val, params, job)
    history, best, done = _resume(loop)
    resumed_after = len(history)
    for entry in history:
        job.on_epoch(entry)  # replay the curves of the epochs run before
    epoch = len(history)
    while not done and epoch < params.epochs:
        epoch += 1
        train_loss, train_metrics = train_epoch(loop, epoch)
        entry = _epoch_log(loop, epoch, train_loss, train_metrics)
        history.append(entry)
        job.on_epoch(entry)
        if best is None or monitored(entry, params.monitor) > monitored(best[0], params.monitor):
            best = (entry, _cpu_copy(loop.evaluated().state_dict()))
        elif params.patience and epoch - best[0].epoch >= params.patience:
            log.info("early stop: no better %s for %d epochs", params.monitor, params.patience)
            done = True
        _save(loop, history, best, done or epoch == params.epochs)
    assert best is not None  # params.epochs >= 1
    weights = sum(float(p.detach().double().sum()) for p in loop.model.parameters())
    log.info(
        "rank %d of %d: %d draws per epoch; weights checksum %.10e",
        job.process.rank,
        job.process.world_size,
        len(loop.sampler),
        weights,
    )
    return FitResult(without_defect_map(best[1]), best[0], history, resumed_after)
