"""Shared by the bench scripts: magnetic_tile's ingest settings, and running the ingest and
clean stages with all outputs in a scratch folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.params import CleanParams, IngestParams
from stages import clean, ingest

REPO = Path(__file__).resolve().parents[1]
MAGNETIC: dict[str, Any] = {  # ../shared/datasets/magnetic_tile as an ingest params change
    "good_class": "MT_Free",
    "classes": None,
    "source": "table",
    "table": "tiles.csv",
    "masks": "masks",
    "group_column": "tile",
    "boxes_column": None,
}


def run_ingest(root: Path, changes: dict[str, Any], manifest: Path) -> list[dict[str, Any]]:
    """ingest.run on `root` with params.yaml's ingest section updated by `changes`."""
    section = yaml.safe_load((REPO / "params.yaml").read_text())["ingest"]
    params = IngestParams.model_validate({**section, **changes, "root": str(root)})
    return ingest.run(params, manifest)


def run_clean(settings: dict[str, Any], root: Path, work: Path) -> dict[str, Any]:
    """clean.run on `work/ingest.parquet` with `settings` (a clean params section), an empty
    review-decisions file, and every output written under `work`."""
    (work / "overrides.csv").write_text("path,decision\n")
    params = CleanParams.model_validate({**settings, "overrides": str(work / "overrides.csv")})
    return clean.run(
        params,
        root,
        work / "ingest.parquet",
        work / "clean.parquet",
        work / "issues.parquet",
        work / "clean.json",
        work / "review.html",
        work / "queue.csv",
    )
