"""Training images/s of a torchvision model on CPU, contiguous vs channels_last, side by side.

Usage: python bench/train_throughput.py [--model resnet18] [--size 64] [--batch 32] [--steps 20]
Prints one line per memory format and their ratio (model alone on random tensors).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pipeline.models import build_model


def images_per_second(
    model: nn.Module, batch: torch.Tensor, steps: int, fmt: torch.memory_format
) -> float:
    model = model.to(memory_format=fmt)
    inputs = batch.contiguous(memory_format=fmt)
    targets = torch.zeros(len(batch), dtype=torch.int64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(steps + 3):  # 3 warm-up steps
        if step == 3:
            started = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
    return steps * len(batch) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn((args.batch, 3, args.size, args.size), generator=generator)
    results = {}
    for name, fmt in (
        ("contiguous", torch.contiguous_format),
        ("channels_last", torch.channels_last),
    ):
        torch.manual_seed(0)
        model = build_model(args.model, 5, pretrained=False, dropout=0.2).train()
        results[name] = images_per_second(model, batch, args.steps, fmt)
        print(f"{args.model} {args.size}px {name:14s} {results[name]:8.1f} images/s")
    print(f"channels_last / contiguous = {results['channels_last'] / results['contiguous']:.2f}x")


if __name__ == "__main__":
    main()
