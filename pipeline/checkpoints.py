"""Checkpoints: the best model for evaluate and predict, and the resumable training state.

Both hold only tensors and plain values, so they load with torch.load(weights_only=True), and
both are written atomically (temp file + rename): a killed run leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.datasets import output_names
from pipeline.errors import ApexLoopError
from pipeline.manifest import TaskInfo
from pipeline.models import Ensemble, build_model
from pipeline.params import TrainParams
from pipeline.paths import atomic_output

log = logging.getLogger(__name__)


def save_model(
    path: Path, states: Sequence[dict[str, Any]], params: TrainParams, info: TaskInfo
) -> None:
    """The model checkpoint: the state dict (of the one model, or of the `Ensemble` of one
    member per state), the member count, model name, image size, task, classes and the train
    params that produced it."""
    state = states[0] if len(states) == 1 else ensemble_state(states)
    checkpoint = {
        "state_dict": state,
        "members": len(states),
        "model": params.model,
        "image_size": params.image_size,
        "task": info.task,
        "classes": list(info.classes),
        "good_class": info.good_class,
        "params": params.model_dump(),
    }
    _save(checkpoint, path)


def ensemble_state(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The `Ensemble` state dict of its members' state dicts."""
    return {
        f"members.{k}.{key}": value
        for k, state in enumerate(states)
        for key, value in state.items()
    }


def _save(value: dict[str, Any], path: Path) -> None:
    """torch.save, atomically and byte-reproducibly: torch names the archive inside the file
    after the file it writes to, so it writes to memory first, never to the random temp name."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_model(path: Path, expected: TaskInfo | None = None) -> tuple[nn.Module, int, TaskInfo]:
    """Rebuild a checkpoint's model (weights_only load) in eval mode on the CPU.

    Returns the model, its input image size and the task it was trained for; with `expected`,
    a checkpoint trained for another task or other classes is an error.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        info = TaskInfo(checkpoint["task"], tuple(checkpoint["classes"]), checkpoint["good_class"])
        count = int(checkpoint["members"])
        pool = checkpoint["params"].get("pool", "avg")  # avg: written before train.pool
    except pickle.UnpicklingError as exc:  # weights_only refused an object: never run it
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({found[1]})" if found else ""
        raise ApexLoopError(
            f"{path}: refused: the checkpoint holds objects other than tensors and plain "
            f"values{what}; ApexLoop never writes such files. Rerun train, or load it elsewhere "
            "only if you trust where it came from"
        ) from None
    except (OSError, RuntimeError, KeyError, EOFError) as exc:
        raise ApexLoopError(f"{path}: cannot load checkpoint ({exc!r}); rerun train") from None
    if expected is not None and info != expected:
        raise ApexLoopError(
            f"{path}: trained for {info.task} {list(info.classes)}, but the manifest is "
            f"{expected.task} {list(expected.classes)}; rerun train"
        )
    outputs = len(output_names(info))
    members = [  # dropout is inactive in eval mode; the head layout is the same
        build_model(checkpoint["model"], outputs, pretrained=False, dropout=0.0, pool=pool)
        for _ in range(count)
    ]
    model = members[0] if count == 1 else Ensemble(members, info.task)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, int(checkpoint["image_size"]), info


def code_files() -> list[Path]:
    """The modules of the pipeline package: code that shapes what training makes."""
    return sorted(Path(__file__).parent.glob("*.py"))


def fingerprint(
    manifest: Path, params: TrainParams, world_size: int, code: Sequence[Path] = ()
) -> str:
    """What a resumable state belongs to: the split manifest's bytes, every train param
    except the device, worker count and ensemble size (a member trains alike whatever the
    number of members), the number of processes, and the bytes of the `code`
    files (after a code change, say a new decode, DVC re-runs the stage: it must train again,
    not resume a state that the old code saved)."""
    settings = params.model_dump(exclude={"device", "num_workers", "ensemble"})
    digest = hashlib.sha256(manifest.read_bytes())
    digest.update(json.dumps([settings, world_size], sort_keys=True).encode())
    for file in code:
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the training state after an epoch (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(state, path)


def load_state(path: Path, expected: str) -> dict[str, Any] | None:
    """The state saved at `path` when it belongs to this run (same fingerprint), else None."""
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, OSError, RuntimeError, EOFError) as exc:
        log.warning("not resuming: %s cannot be loaded (%s); starting afresh", path, exc)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != expected:
        log.info("not resuming: %s belongs to other data or params; starting afresh", path)
        return None
    return state
