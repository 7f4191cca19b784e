"""`apexloop report` on a tiny real git + DVC project, and the example GitHub workflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline.cli import main
from pipeline.report import Change, format_cell, format_delta, is_headline, render_params
from pipeline.report import render_metrics_file as render_file

# The stage: metrics from train.lr (values exact in binary, so deltas are exact), a PNG whose
# colour follows lr, and a TSV curve for a non-image plot.
MAKE_METRICS = """\
import json
import yaml
from PIL import Image

lr = yaml.safe_load(open("params.yaml"))["train"]["lr"]
metrics = {
    "images": 8,
    "train": {"accuracy": 0.875},
    "val": {"accuracy": 1 - lr, "macro_f1": 0.5, "miss_rate": lr / 2},
    "test": {
        "accuracy": 0.625,
        "per_class": {"good": {"f1": 0.75, "support": 4}, "scratch": {"f1": lr, "support": 4}},
    },
}
json.dump(metrics, open("metrics.json", "w"))
Image.new("RGB", (4, 4), (int(255 * lr), 0, 0)).save("confusion.png")
open("loss.tsv", "w").write("step\\tloss\\n1\\t" + str(lr) + "\\n")
"""
DVC_YAML = {
    "stages": {
        "fit": {
            "cmd": "python make_metrics.py",
            "deps": ["make_metrics.py"],
            "params": ["train"],
            "metrics": [{"metrics.json": {"cache": False}}],
            "outs": [{"confusion.png": {"cache": False}}, {"loss.tsv": {"cache": False}}],
        }
    },
    "plots": ["confusion.png", {"loss": {"x": "step", "y": {"loss.tsv": "loss"}}}],
}


def sh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


def dvc(cwd: Path, *args: str) -> None:
    sh(cwd, sys.executable, "-m", "dvc", *args)


def write_params(root: Path, lr: float) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": lr, "epochs": 3}}))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Committed with train.lr 0.25 and its results; the working tree has lr 0.5, reproduced."""
    root = tmp_path_factory.mktemp("project")
    sh(root, "git", "init", "-q")
    dvc(root, "init", "-q")
    (root / "make_metrics.py").write_text(MAKE_METRICS)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    write_params(root, 0.25)
    dvc(root, "repro", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "base")
    write_params(root, 0.5)
    dvc(root, "repro", "-q")
    return root


@pytest.fixture(autouse=True)
def no_analytics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


def test_report_compares_params_metrics_and_plots_with_base(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(project)
    assert main(["report", "--base", "HEAD"]) == 0
    out = capsys.readouterr().out

    assert "| `train.lr` | 0.25 | 0.5 |" in out
    assert "train.epochs" not in out  # unchanged params are not listed
    assert "| `val.accuracy` | 0.75 | 0.5 | -0.2500 |" in out
    assert "| `val.miss_rate` | 0.125 | 0.25 | +0.1250 |" in out
    assert "| `test.accuracy` | 0.625 | 0.625 | 0 |" in out  # unchanged: base value still shown
    assert "| `test.per_class.scratch.f1` | 0.25 | 0.5 | +0.2500 |" in out
    assert "**metrics.json**: 3 of 10 changed" in out
    # headline figures (val before test) above the fold; per-class and train numbers folded
    details = out.index("<details>")
    assert out.index("`val.accuracy`") < out.index("`val.macro_f1`") < out.index("`test.accuracy`")
    assert out.index("`test.accuracy`") < details
    assert details < out.index("`test.per_class.scratch.f1`")
    assert "`test.per_class.good.f1`" not in out  # unchanged and not a headline figure

    assert "![confusion](confusion.png)" in out
    assert "![loss" not in out  # a data plot, not an image
    assert "`dvc plots diff HEAD`" in out


def test_report_from_a_subfolder_writes_file_and_plots_html(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "notes").mkdir(exist_ok=True)  # an empty folder: invisible to git and DVC
    monkeypatch.chdir(project / "notes")
    out, plots = tmp_path / "report.md", tmp_path / "plots"
    args = ["report", "--base", "HEAD", "--out", str(out), "--plots-dir", str(plots)]
    assert main(args) == 0

    text = out.read_text(encoding="utf-8")
    assert "| `train.lr` | 0.25 | 0.5 |" in text
    assert f"`{plots}/index.html`" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "report.md"]  # no temp left
    assert (plots / "index.html").is_file()
    assert {p.name for p in (plots / "static").iterdir()} == {
        "HEAD_confusion.png",
        "workspace_confusion.png",
    }


def test_unknown_revision_exits_2_naming_it(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(project)
    out = tmp_path / "report.md"
    assert main(["report", "--base", "no-such-branch", "--out", str(out)]) == 2
    assert "unknown git revision 'no-such-branch'" in caplog.text
    assert "fetch-depth: 0" in caplog.text
    assert not out.exists()
    assert main(["report", "--base=--all"]) == 2
    assert "'--all' is not a git revision" in caplog.text


def test_outside_a_git_repository_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--base", "HEAD"]) == 2
    assert "is not inside a git repository" in caplog.text


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """A git + DVC project with one empty commit."""
    root = tmp_path / "bare"
    root.mkdir()
    sh(root, "git", "init", "-q")
    dvc(root, "init", "-q")
    sh(root, "git", "commit", "-qm", "init")
    return root


def test_dvc_failure_exits_2_with_dvc_stderr(
    bare: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with (bare / ".dvc/config").open("a") as config:
        config.write("[core]\n    bogus = 1\n")
    monkeypatch.chdir(bare)
    assert main(["report", "--base", "HEAD"]) == 2
    assert "`dvc params diff HEAD --json` failed (exit 251)" in caplog.text
    assert "extra keys not allowed" in caplog.text  # DVC's own message


def test_unreadable_working_tree_exits_2(
    bare: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # DVC itself only warns and exits 0 here, printing an empty diff
    (bare / "dvc.yaml").write_text("stages: [unclosed\n")
    monkeypatch.chdir(bare)
    assert main(["report", "--base", "HEAD"]) == 2
    assert "could not read the working tree's params" in caplog.text
    assert "dvc.yaml" in caplog.text.split("params", 1)[1]


def test_metrics_missing_at_base_are_reported_as_added(
    bare: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stage = {"cmd": "true", "metrics": [{"m.json": {"cache": False}}]}
    (bare / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": stage}}))
    sh(bare, "git", "add", "dvc.yaml")
    sh(bare, "git", "commit", "-qm", "declare m.json, without it")
    (bare / "m.json").write_text('{"val": {"accuracy": 0.5}}')
    monkeypatch.chdir(bare)
    assert main(["report", "--base", "HEAD"]) == 0
    out = capsys.readouterr().out
    assert "> **Warning:** DVC could not read some metrics at `HEAD`" in out
    assert "| `val.accuracy` | — | 0.5 | added |" in out
    assert "No params changed." in out
    assert "No image plots in dvc.yaml." in out


def test_git_repository_without_dvc_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sh(tmp_path, "git", "init", "-q")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--base", "HEAD"]) == 2
    assert "no DVC project" in caplog.text


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("val.accuracy", True),
        ("test.overkill_rate", True),
        ("accuracy", True),
        ("val.macro_f1_low", True),
        ("train.accuracy", False),
        ("train_accuracy", False),
        ("test.per_class.good.f1", False),
        ("val.loss", False),
        ("operating.test.miss_rate_high", True),
        ("operating.val.overkill_rate", True),
        ("operating.test.per_class.good.f1", False),
        ("train_val_gap.accuracy", True),
    ],
)
def test_headline_keys(key: str, expected: bool) -> None:
    assert is_headline(key) is expected


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (Change("a", 0.5, 0.25, -0.25), "-0.2500"),
        (Change("a", 3, 5, 2), "+2"),
        (Change("a", 0.5, 0.5, 0.0), "0"),
        (Change("a", 1e-6, 3e-6, 2e-6), "+2.00e-06"),
        (Change("a", "cpu", "cuda"), "—"),
        (Change("a", None, 0.5), "added"),
        (Change("a", 0.5, None), "removed"),
    ],
)
def test_format_delta(change: Change, expected: str) -> None:
    assert format_delta(change) == expected


def test_cells_escape_pipes_and_cut_long_values() -> None:
    assert format_cell("a|b") == "a\\|b"
    assert format_cell(None) == "—"
    assert format_cell(0.123456, is_metric=True) == "0.1235"
    cut = format_cell("x" * 500)
    assert len(cut) == 80 and cut.endswith("…")


def test_file_without_headline_keys_folds_what_changed() -> None:
    text = render_file("clean.json", [Change("images", 10, 12, 2), Change("dupes", 1, 1, 0)])
    assert text.startswith("**clean.json**: 1 of 2 changed\n\n<details>")
    assert "(1; 1 unchanged not shown)" in text
    assert "| `images` | 10 | 12 | +2 |" in text
    assert "dupes" not in text


def test_file_without_changes_is_one_line() -> None:
    text = render_file("clean.json", [Change("images", 10, 10, 0), Change("dupes", 1, 1, 0)])
    assert text == "**clean.json**: no change (2 metrics)"


def test_no_params_changed() -> None:
    assert render_params({}).endswith("No params changed.")


def test_workflow_comments_the_report_on_pull_requests() -> None:
    workflow = yaml.safe_load((REPO / ".github/workflows/report.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers
    assert workflow["permissions"]["pull-requests"] == "write"
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert str(python["with"]["python-version"]) == "3.11"
    runs = [s.get("run", "") for s in steps]
    order = ["pip install -e .", "dvc pull", "dvc repro", "apexloop report", "gh pr comment"]
    positions = [next(i for i, r in enumerate(runs) if command in r) for command in order]
    assert positions == sorted(positions)
    report = steps[positions[3]]
    assert '--base "origin/$BASE_REF"' in report["run"] and "--out report.md" in report["run"]
    assert report["env"]["BASE_REF"] == "${{ github.base_ref }}"
    comment = steps[positions[4]]
    assert "--body-file report.md" in comment["run"]
    assert comment["env"]["GH_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
