"""Shared by the bench scripts: run the clean stage with all outputs in a scratch folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.params import CleanParams
from stages import clean


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
