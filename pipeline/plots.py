"""PNG plots for people (DVC renders its own from the CSV/JSON data files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers

import matplotlib.pyplot as plt
import numpy as np

from pipeline.paths import atomic_output


def confusion_matrix_png(matrix: np.ndarray, names: Sequence[str], path: Path, title: str) -> None:
    """Counts per (true row, predicted column), each cell also shown as a share of its row."""
    size = max(4.0, 0.9 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    row_share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if row_share[i, j] > 0.5 else "black"
        ax.text(
            j,
            i,
            f"{count}\n{row_share[i, j]:.0%}",
            ha="center",
            va="center",
            color=colour,
            fontsize=8,
        )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)


def curves_png(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    title: str,
    labels: tuple[str, str],
) -> None:
    """One line per class: curves[name] = (x, y), e.g. (recall, precision) or (fpr, tpr)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (x, y) in curves.items():
        ax.plot(x, y, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    if curves:
        ax.legend(fontsize=8)
    _save(fig, path)


def tradeoff_png(
    overkill: np.ndarray, miss: np.ndarray, chosen: tuple[float, float] | None, path: Path
) -> None:
    """Miss rate against overkill over every threshold, the operating point marked."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.step(overkill, miss, where="post", label="val, every threshold")
    if chosen is not None:
        ax.plot(*chosen, "o", color="crimson", label="operating point")
        ax.annotate(
            f"overkill {chosen[0]:.1%}, miss {chosen[1]:.1%}",
            chosen,
            textcoords="offset points",
            xytext=(8, 8),
            fontsize=8,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("overkill rate (good parts rejected)")
    ax.set_ylabel("miss rate (defects passed as good)")
    ax.set_title("miss vs overkill")
    ax.legend(fontsize=8)
    _save(fig, path)


def training_curves_png(history: Sequence[dict[str, float | None]], path: Path) -> None:
    """Loss and macro-F1 per epoch, train against val: over-fitting shows as a widening gap."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, metric in zip(axes, ("loss", "macro_f1"), strict=True):
        for side in ("train", "val"):
            ax.plot(epochs, [row[f"{side}_{metric}"] for row in history], marker=".", label=side)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
