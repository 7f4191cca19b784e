"""Precision and recall of each clean check against the synthetic generator's planted truth.

Usage: TORCH_HOME=../shared/weights python bench/clean_fidelity.py [--count 600] [--seed 0]
Generates a data set, runs ingest and clean with params.yaml's settings (workers as set there),
and prints P/R per check. Near duplicates are scored twice: raw, and ignoring pairs of shots of
one physical part (the generator shoots each part 1-3 times with small shifts; those shots are
near-identical by construction but are not planted faults).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path
from typing import Any

import yaml
from scratch import run_clean

from pipeline import synth
from pipeline.manifest import read_manifest
from pipeline.params import IngestParams
from stages import ingest

REPO = Path(__file__).resolve().parents[1]
CHECK_OF_FAULT = {
    "corrupt": "unreadable",
    "exact_duplicate": "exact_duplicate",
    "near_duplicate": "near_duplicate",
    "blurred": "blur",
    "flipped_label": "label",
}


def precision_recall(flagged: set[str], planted: set[str]) -> str:
    hits = len(flagged & planted)
    precision = hits / len(flagged) if flagged else float("nan")
    recall = hits / len(planted) if planted else float("nan")
    return f"P={precision:.3f} R={recall:.3f} (flagged {len(flagged)}, planted {len(planted)})"


def run(
    work: Path, count: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    synth.generate(work / "raw", count=count, seed=seed, multilabel=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    ingest_params = IngestParams.model_validate({**params["ingest"], "root": str(work / "raw")})
    ingest.run(ingest_params, work / "ingest.parquet")
    summary = run_clean(params["clean"], work / "raw", work)
    print(f"label-issue embedding: {summary['label_issues']['embedding']}")
    issues, _ = read_manifest(work / "issues.parquet", "issues")
    with (work / "raw/truth.csv").open(newline="") as handle:
        truth = {f"images/{row['path']}": row for row in csv.DictReader(handle)}
    with (work / "raw/labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            truth[f"images/{row['path']}"]["group"] = row["group"]
    return issues, truth


def same_part_only(
    issue: dict[str, Any], issues: list[dict[str, Any]], truth: dict[str, dict[str, str]]
) -> bool:
    """The image's near-duplicate group holds only shots of one part (a planted copy has a part
    of its own, so a group joining it to its source spans two parts)."""
    group = issue["near_duplicate_group"]
    members = [i["path"] for i in issues if i["near_duplicate_group"] == group]
    return len({truth[path]["group"] for path in members}) == 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        issues, truth = run(Path(tmp), args.count, args.seed)
    for fault, check in CHECK_OF_FAULT.items():
        flagged = {i["path"] for i in issues if i[f"is_{check}_issue"]}
        if check == "near_duplicate":  # exact copies are near copies too; score them apart
            flagged = {p for p in flagged if truth[p]["fault"] != "exact_duplicate"}
        planted = {path for path, row in truth.items() if row["fault"] == fault}
        print(f"{check:16s} {precision_recall(flagged, planted)}")
        if check == "near_duplicate":
            cross = {
                i["path"]
                for i in issues
                if i["path"] in flagged and not same_part_only(i, issues, truth)
            }
            print(f"{'  cross-part':16s} {precision_recall(cross, planted)}")


if __name__ == "__main__":
    main()
