"""Clean-stage throughput, without and with label issues, against CleanVision on the same images.

Usage: TORCH_HOME=../shared/weights python bench/clean_speed.py [--synth 5000] [--magnetic PATH]
For each data set: images/s of the clean stage with the label-issue check off and on (params.yaml
settings otherwise), CleanVision Imagelab's find_issues() wall time on the same readable images
in the same run, and the ratio (ours without label issues / CleanVision; goal <= 0.2).
Near-duplicate search scaling: bench/near_duplicate_search.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from cleanvision import Imagelab
from scratch import MAGNETIC, run_clean, run_ingest

from pipeline import synth
from pipeline.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def time_clean(root: Path, work: Path, label: str) -> float:
    params = yaml.safe_load((REPO / "params.yaml").read_text())["clean"]
    params["actions"]["label"] = label
    started = time.perf_counter()
    run_clean(params, root, work)
    return time.perf_counter() - started


def measure(name: str, root: Path, ingest_changes: dict[str, Any], work: Path) -> None:
    run_ingest(root, ingest_changes, work / "ingest.parquet")
    rows, _ = read_manifest(work / "ingest.parquet", "images")
    n = len(rows)
    without = time_clean(root, work, "off")
    with_labels = time_clean(root, work, "flag")
    paths = [str(root / row["path"]) for row in rows if not row["is_unreadable_issue"]]
    started = time.perf_counter()
    Imagelab(filepaths=paths).find_issues()
    cleanvision = time.perf_counter() - started
    print(f"{name}: {n} images")
    print(f"  clean, label issues off  {without:7.1f} s  {n / without:7.1f} images/s")
    print(f"  clean, label issues on   {with_labels:7.1f} s  {n / with_labels:7.1f} images/s")
    print(
        f"  CleanVision Imagelab     {cleanvision:7.1f} s  {len(paths) / cleanvision:7.1f} images/s"
    )
    print(f"  ratio ours (off) / CleanVision = {without / cleanvision:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synth", type=int, default=5000, help="base images to generate; 0 skips")
    parser.add_argument(
        "--magnetic", type=Path, default=REPO.parent / "shared/datasets/magnetic_tile"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.magnetic.is_dir():
            (Path(tmp) / "mt").mkdir()
            measure("magnetic_tile", args.magnetic, MAGNETIC, Path(tmp) / "mt")
        if args.synth:
            root = Path(tmp) / "raw"
            synth.generate(root, count=args.synth, seed=0, multilabel=False)
            (Path(tmp) / "synth").mkdir()
            measure(f"synthetic ({args.synth} base images)", root, {}, Path(tmp) / "synth")


if __name__ == "__main__":
    main()
