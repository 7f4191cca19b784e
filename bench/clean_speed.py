"""Clean-stage throughput, without and with label issues, against CleanVision on the same images.

Usage: TORCH_HOME=../shared/weights python bench/clean_speed.py [--synth 5000] [--magnetic PATH]
           [--repeats 3]
For each data set: images/s of the clean stage with the label-issue check off and on (params.yaml
settings otherwise), CleanVision Imagelab's find_issues() wall time on the same readable images
in the same run, and the ratio (ours without label issues / CleanVision; goal <= 0.2).
Ours (off) and CleanVision run alternately --repeats times, so a disturbance of the shared host
hits both alike; times are the best run of each, the ratio the median of the pairs' ratios.
All data sets' pairs run before any run with label issues, which loads torch and cleanlab into
this process (the stage without label issues never does).
Near-duplicate search scaling: bench/near_duplicate_search.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
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


def time_cleanvision(paths: list[str]) -> float:
    started = time.perf_counter()
    Imagelab(filepaths=paths).find_issues()
    return time.perf_counter() - started


@dataclass
class Figures:
    """One data set's timings."""

    name: str
    images: int
    readable: list[str]
    pairs: list[tuple[float, float]]
    with_labels: float = 0.0

    def report(self) -> None:
        n = self.images
        without = min(a for a, _ in self.pairs)
        cleanvision = min(b for _, b in self.pairs)
        ratios = [a / b for a, b in self.pairs]
        print(f"{self.name}: {n} images")
        print(f"  clean, label issues off  {without:7.1f} s  {n / without:7.1f} images/s")
        on = self.with_labels
        print(f"  clean, label issues on   {on:7.1f} s  {n / on:7.1f} images/s")
        print(
            f"  CleanVision Imagelab     {cleanvision:7.1f} s  "
            f"{len(self.readable) / cleanvision:7.1f} images/s"
        )
        pairs = zip(self.pairs, ratios, strict=True)
        each = ", ".join(f"{a:.2f}/{b:.2f} s = {r:.3f}" for (a, b), r in pairs)
        ratio = statistics.median(ratios)
        print(f"  ratio ours (off) / CleanVision = {ratio:.3f} (per pair: {each})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synth", type=int, default=5000, help="base images to generate; 0 skips")
    parser.add_argument(
        "--magnetic", type=Path, default=REPO.parent / "shared/datasets/magnetic_tile"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved ours/CleanVision pairs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sets: list[tuple[str, Path, dict[str, Any], Path]] = []
        if args.magnetic.is_dir():
            sets.append(("magnetic_tile", args.magnetic, MAGNETIC, Path(tmp) / "mt"))
        if args.synth:
            root = Path(tmp) / "raw"
            synth.generate(root, count=args.synth, seed=0, multilabel=False)
            sets.append((f"synthetic ({args.synth} base images)", root, {}, Path(tmp) / "synth"))
        figures = []
        for name, root, changes, work in sets:
            work.mkdir()
            run_ingest(root, changes, work / "ingest.parquet")
            rows, _ = read_manifest(work / "ingest.parquet", "images")
            paths = [str(root / row["path"]) for row in rows if not row["is_unreadable_issue"]]
            pairs = [
                (time_clean(root, work, "off"), time_cleanvision(paths))
                for _ in range(args.repeats)
            ]
            figures.append(Figures(name, len(rows), paths, pairs))
        # label issues load torch, cleanlab and sklearn, which the stage without them never
        # imports (a fresh `dvc repro` does not have them): those runs come after all pairs
        for (_, root, _, work), found in zip(sets, figures, strict=True):
            found.with_labels = time_clean(root, work, "flag")
        for found in figures:
            found.report()


if __name__ == "__main__":
    main()
