"""Precision and recall of each clean check against the synthetic generator's planted truth.

Usage: TORCH_HOME=../shared/weights python bench/clean_fidelity.py [--count 600] [--seed 0]
Generates a data set, runs ingest and clean with params.yaml's settings (workers as set there),
and prints P/R per check.

Near duplicates: the generator shoots each part 1-3 times (crops up to 6 px apart, fresh noise),
so shots of one part are near duplicates by construction, as are planted copies (JPEG, rescale,
shift) of their source. The true near-duplicate clusters are therefore the parts joined through
planted copies. Recall: planted copies put in one group with their source. Precision: flagged
images whose group lies inside one true cluster (a group that joins two distinct parts is wrong).
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


def true_clusters(truth: dict[str, dict[str, str]]) -> dict[str, str]:
    """Path -> id of its true near-duplicate cluster: its part, joined to the part of the
    source of a planted copy (duplicates get a part of their own in the generator)."""
    part_of = {path: row["group"] for path, row in truth.items()}
    merged = {part: part for part in part_of.values()}

    def find(part: str) -> str:
        while merged[part] != part:
            part = merged[part]
        return part

    for path, row in truth.items():
        if row["fault"] in ("near_duplicate", "exact_duplicate"):
            merged[find(part_of[path])] = find(part_of[f"images/{row['source']}"])
    return {path: find(part) for path, part in part_of.items()}


def near_duplicate_fidelity(issues: list[dict[str, Any]], truth: dict[str, dict[str, str]]) -> str:
    cluster = true_clusters(truth)
    members: dict[int, list[str]] = {}
    for issue in issues:
        if issue["near_dup_group"] is not None:
            members.setdefault(issue["near_dup_group"], []).append(issue["path"])
    group_of = {path: group for group, paths in members.items() for path in paths}
    # exact copies are near copies too; they are scored by the exact check
    flagged = {
        i["path"]
        for i in issues
        if i["is_near_duplicate_issue"] and truth[i["path"]]["fault"] != "exact_duplicate"
    }
    right = {p for p in flagged if len({cluster[m] for m in members[group_of[p]]}) == 1}
    planted = {p: r for p, r in truth.items() if r["fault"] == "near_duplicate"}
    found = {
        p
        for p, r in planted.items()
        if p in group_of and group_of[p] == group_of.get(f"images/{r['source']}")
    }
    precision = len(right) / len(flagged) if flagged else float("nan")
    return (
        f"P={precision:.3f} R={len(found) / len(planted):.3f} "
        f"(flagged {len(flagged)}, {len(flagged) - len(right)} in groups joining distinct parts; "
        f"planted {len(planted)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        issues, truth = run(Path(tmp), args.count, args.seed)
    for fault, check in CHECK_OF_FAULT.items():
        if check == "near_duplicate":
            print(f"{check:16s} {near_duplicate_fidelity(issues, truth)}")
            continue
        flagged = {i["path"] for i in issues if i[f"is_{check}_issue"]}
        planted = {path for path, row in truth.items() if row["fault"] == fault}
        print(f"{check:16s} {precision_recall(flagged, planted)}")


if __name__ == "__main__":
    main()
