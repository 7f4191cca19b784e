"""Per-stage wall time and images/s of ingest and clean on a data set, plus a whole `dvc repro`.

Usage:
  python bench/stage_throughput.py --synth 2000          # generated data of 2,000 base images
  python bench/stage_throughput.py --data ../shared/datasets/magnetic_tile --table tiles.csv \
      --group-column tile --masks masks --good-class MT_Free
Prints one line per stage. Figures depend on the machine; run side by side to compare changes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml
from scratch import run_clean

from pipeline import synth
from pipeline.params import IngestParams
from stages import ingest

REPO = Path(__file__).resolve().parents[1]


def ingest_params(args: argparse.Namespace, root: Path) -> IngestParams:
    section = yaml.safe_load((REPO / "params.yaml").read_text())["ingest"]
    section.update(root=str(root))
    if args.data:
        section.update(
            classes=None,
            good_class=args.good_class,
            table=args.table,
            group_column=args.group_column,
            boxes_column=None,
            masks=args.masks,
        )
    return IngestParams.model_validate(section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synth", type=int, default=600, help="base images to generate")
    parser.add_argument("--data", type=Path, help="an existing data set instead of --synth")
    parser.add_argument("--table", default="labels.csv")
    parser.add_argument("--group-column", default="group")
    parser.add_argument("--masks", default=None)
    parser.add_argument("--good-class", default="good")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = args.data
        if root is None:
            root = work / "raw"
            started = time.perf_counter()
            synth.generate(root, count=args.synth, seed=0, multilabel=False)
            print(f"synth    {time.perf_counter() - started:7.2f} s")
        params = ingest_params(args, root)
        started = time.perf_counter()
        rows = ingest.run(params, work / "ingest.parquet")
        seconds = time.perf_counter() - started
        print(
            f"ingest   {seconds:7.2f} s  {len(rows) / seconds:8.1f} images/s  ({len(rows)} images)"
        )
        started = time.perf_counter()
        run_clean(yaml.safe_load((REPO / "params.yaml").read_text())["clean"], root, work)
        seconds = time.perf_counter() - started
        print(f"clean    {seconds:7.2f} s  {len(rows) / seconds:8.1f} images/s")


if __name__ == "__main__":
    main()
