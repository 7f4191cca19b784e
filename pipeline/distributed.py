"""torchrun / DDP plumbing: which process this is, and keeping replicas identical.

`torchrun --nproc_per_node=N -m stages.train ...` sets RANK, WORLD_SIZE and the rendezvous
variables; without them training runs as one process. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.errors import ApexLoopError


@dataclass(frozen=True)
class Process:
    """This training process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the checkpoints, logs and metrics."""
        return self.rank == 0


def start(device: torch.device) -> Process:
    """Join the process group torchrun describes in the environment, if any; the GPU of a
    CUDA process is its LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Process(0, 1)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    except (RuntimeError, ValueError) as error:
        raise ApexLoopError(
            f"could not join the distributed job (WORLD_SIZE={world_size}): {error}; "
            "start it with torchrun --nproc_per_node=N -m stages.train ..."
        ) from error
    return Process(dist.get_rank(), dist.get_world_size())


def ranks_on_this_machine() -> int:
    """Training processes torchrun started on this machine (LOCAL_WORLD_SIZE; 1 without it):
    they share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def stop(process: Process) -> None:
    """Leave the process group once every rank is done."""
    if process.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, process: Process, device: torch.device) -> nn.Module:
    """The model as DDP when distributed (gradients averaged over ranks), else itself."""
    if process.world_size == 1:
        return model
    if device.type != "cuda":
        return DistributedDataParallel(model)
    return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (for evaluation and state dicts)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def sync_buffers(model: nn.Module, process: Process) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics drift apart on the
    last batch of an epoch), so all ranks validate the same model and agree on stopping."""
    if process.world_size == 1:
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, src=0)
