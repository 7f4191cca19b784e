"""The real pipeline under real DVC in a temporary git repository, on generated data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_project

from pipeline.manifest import read_manifest

STAGES = ["ingest", "clean", "split", "train", "evaluate"]


def sh(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy of the project with a small synthetic data set, after one `dvc repro`."""
    root = tmp_path_factory.mktemp("project")
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(epochs=2, image_size=32)
    params["split"]["min_groups_policy"] = "train_only"  # 80 images: rare classes have 1-2 parts
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, sys.executable, "-m", "pipeline.cli", "synth", "--out", "data/raw", "--count", "80")
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "project")
    sh(root, "dvc", "repro")
    return root


def test_repro_runs_every_stage_and_writes_outputs(project: Path) -> None:
    rows, info = read_manifest(project / "data/interim/split.parquet", "split")
    assert {row["split"] for row in rows} == {"train", "val", "test"}
    assert info.good_class == "good"
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    test = metrics["test"]
    assert test["images"] == sum(row["split"] == "test" for row in rows)
    assert {"accuracy", "macro_f1", "miss_rate", "overkill_rate", "per_class"} <= set(test)
    assert (project / "models/model.pt").stat().st_size > 0
    assert (project / "reports/evaluate/figures/confusion.png").read_bytes()[:4] == b"\x89PNG"
    shown = sh(project, "dvc", "metrics", "show", "--json").stdout
    assert "miss_rate" in shown and "overkill_rate" in shown


def test_every_plot_renders(project: Path) -> None:
    shown = json.loads(sh(project, "dvc", "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown.get("errors")
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    names = [p if isinstance(p, str) else next(iter(p)) for p in plots]
    assert set(names) <= set(shown["data"])
    confusion = shown["data"]["test confusion (operating point)"][0]["content"]
    counts = {(d["actual"], d["predicted"]): d["count"] for d in confusion["data"]["values"]}
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    assert sum(counts.values()) == metrics["test"]["images"]


def test_second_repro_changes_nothing(project: Path) -> None:
    out = sh(project, "dvc", "repro").stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change" in out
    assert "Running stage" not in out


def test_the_review_queue_is_a_tracked_dependency(project: Path) -> None:
    queue = (project / "reports/review_queue.csv").read_text().splitlines()
    overrides = project / "data/overrides.csv"
    original = overrides.read_text()
    overrides.write_text(queue[0] + "\n" + queue[1].rstrip(",") + ",keep\n")
    try:
        status = json.loads(sh(project, "dvc", "status", "--json").stdout)
        changed = [entry for entry in status["clean"] if "changed deps" in entry]
        assert changed and "data/overrides.csv" in changed[0]["changed deps"]
    finally:
        overrides.write_text(original)


def test_experiment_with_a_param_change(project: Path) -> None:
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "baseline")
    sh(project, "dvc", "exp", "run", "-S", "train.epochs=1")
    table = json.loads(sh(project, "dvc", "exp", "show", "--json").stdout)
    epochs = [
        exp["data"]["params"]["params.yaml"]["data"]["train"]["epochs"]
        for rev in table
        for exp_range in rev.get("experiments") or []
        for exp in exp_range["revs"]
    ]
    assert 1 in epochs
    diff = json.loads(sh(project, "dvc", "params", "diff", "--json").stdout)
    assert diff["params.yaml"]["train.epochs"] == {"old": 2, "new": 1, "diff": -1}


def test_typo_in_a_param_stops_the_experiment_with_a_clear_error(project: Path) -> None:
    # DVC itself refuses to set a key that params.yaml lacks, naming it ...
    result = sh(project, "dvc", "exp", "run", "-S", "train.lrr=0.1", check=False)
    assert result.returncode != 0
    assert "train.lrr" in result.stdout + result.stderr
    # ... and a key forced in (`+key`, or a hand edit) is stopped by the stage's validation,
    # which names the key and the valid keys.
    result = sh(project, "dvc", "exp", "run", "-S", "+train.lrr=0.1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "unknown key 'train.lrr'" in output
    assert "Valid keys here: model, pretrained, image_size, epochs, batch_size, lr," in output
    assert "Traceback" not in output


def test_out_of_range_param_names_the_key_and_range(project: Path) -> None:
    result = sh(project, "dvc", "exp", "run", "-S", "train.lr=-1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "bad value for 'train.lr' (got -1)" in output
    assert "allowed: 0 < value <= 10" in output


def test_a_fold_experiment_as_the_readme_shows_it(project: Path) -> None:
    sh(project, "git", "checkout", "--", "params.yaml")  # undo the refused edits above
    folds = ["-S", "split.folds=2", "-S", "split.fold=1", "-S", "split.val=0"]
    sh(project, "dvc", "exp", "run", *folds, "-S", "split.train=0.85")
    rows, _ = read_manifest(project / "data/interim/split.parquet", "split")
    assert {row["fold"] for row in rows if row["split"] == "val"} == {1}
    assert {row["fold"] for row in rows if row["split"] == "train"} <= {0, None}
    assert {row["fold"] for row in rows if row["split"] == "test"} == {None}
    shown = json.loads(sh(project, "dvc", "metrics", "show", "--json").stdout)
    split_metrics = next(
        files["reports/split.json"]["data"]
        for rev in shown.values()
        for files in [rev["data"]]
        if "reports/split.json" in files
    )
    assert {"fold_0", "fold_1", "test", "max_gap_points"} <= set(split_metrics)
    assert split_metrics["fold_1"]["images"] == split_metrics["val"]["images"]
