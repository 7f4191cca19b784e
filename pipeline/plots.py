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
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
