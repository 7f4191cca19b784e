"""The review page and the review-queue round trip: a person's decisions win on the next run."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run_dvc_stages, write_params

from pipeline import synth
from pipeline.manifest import read_manifest
from stages import clean

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated data set after ingest and clean, run as dvc.yaml declares them."""
    work = tmp_path_factory.mktemp("review")
    synth.generate(work / "raw", count=60, seed=5, multilabel=False)
    (work / "data").mkdir()
    shutil.copy(REPO / "data/overrides.csv", work / "data/overrides.csv")
    write_params(
        work / "params.yaml",
        ingest={"root": str(work / "raw")},
        clean={"workers": 1, "label_issues": {**_label_settings(), "embedding": "thumbnail"}},
    )
    run_dvc_stages(work, only=["ingest", "clean"])
    return work


def _label_settings() -> dict[str, object]:
    import yaml

    return dict(yaml.safe_load((REPO / "params.yaml").read_text())["clean"]["label_issues"])


def queue_rows(work: Path) -> list[dict[str, str]]:
    with (work / "reports/review_queue.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_page_shows_every_image_with_an_issue(cleaned: Path) -> None:
    page = (cleaned / "reports/clean_review.html").read_text()
    issues, _ = read_manifest(cleaned / "data/interim/issues.parquet", "issues")
    found = [i for i in issues if i["action"] != "keep"]
    assert found, "the generated set has planted faults"
    for issue in found:
        assert issue["path"] in page
    assert page.count("data:image/jpeg;base64,") >= sum(not i["is_unreadable_issue"] for i in found)
    assert 'src="http' not in page  # self-contained
    for check in ("unreadable", "exact_duplicate", "blur"):
        assert f'id="{check}"' in page


def test_queue_lists_flagged_images_with_an_empty_decision(cleaned: Path) -> None:
    rows = queue_rows(cleaned)
    issues, _ = read_manifest(cleaned / "data/interim/issues.parquet", "issues")
    assert {r["path"] for r in rows} == {i["path"] for i in issues if i["action"] != "keep"}
    assert all(r["decision"] == "" for r in rows)


def write_decisions(work: Path, rows: list[dict[str, str]]) -> None:
    """Write the edited queue where the test's params point clean.overrides."""
    with (work / "data/overrides.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def rerun_clean(work: Path) -> int:
    return clean.main([
        "--params", str(work / "params.yaml"), "--root", str(work / "raw"),
        "--manifest", str(work / "data/interim/ingest.parquet"),
        "--out", str(work / "out/clean.parquet"), "--issues", str(work / "out/issues.parquet"),
        "--metrics", str(work / "out/clean.json"), "--review", str(work / "out/review.html"),
        "--queue", str(work / "out/queue.csv"),
    ])  # fmt: skip


def test_decisions_win_over_the_automatic_action(cleaned: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(cleaned, work)
    rows = queue_rows(work)
    removed_copy = next(r for r in rows if r["action"] == "remove" and "exact" in r["issues"])
    flagged = [r for r in rows if r["action"] == "flag"]
    to_drop, to_relabel = flagged[0], flagged[1]
    new_class = next(c for c in synth.CLASSES if c != to_relabel["label"])
    removed_copy["decision"], to_drop["decision"] = "keep", "drop"
    to_relabel["decision"] = f"relabel:{new_class}"
    write_decisions(work, rows)
    write_params(
        work / "params.yaml",
        ingest={"root": str(work / "raw")},
        clean={
            "workers": 1,
            "overrides": str(work / "data/overrides.csv"),
            "label_issues": {**_label_settings(), "embedding": "thumbnail"},
        },
    )
    assert rerun_clean(work) == 0
    kept, _ = read_manifest(work / "out/clean.parquet", "images")
    by_path = {row["path"]: row for row in kept}
    assert removed_copy["path"] in by_path
    assert to_drop["path"] not in by_path
    assert by_path[to_relabel["path"]]["label"] == new_class
    issues, _ = read_manifest(work / "out/issues.parquet", "issues")
    overridden = {i["path"]: i for i in issues if i["override"] is not None}
    assert set(overridden) == {removed_copy["path"], to_drop["path"], to_relabel["path"]}
    assert overridden[to_drop["path"]]["reason"].startswith("override drop (automatic: flag)")
    assert json.loads((work / "out/clean.json").read_text())["overridden"] == 3


def test_bad_decisions_are_one_error_listing_every_row(
    cleaned: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    work = tmp_path / "work"
    shutil.copytree(cleaned, work)
    rows = queue_rows(work)[:3]
    rows[0]["decision"] = "maybe"
    rows[1]["decision"] = "relabel:rust"
    rows[2]["path"], rows[2]["decision"] = "images/nowhere.png", "keep"
    write_decisions(work, rows)
    write_params(
        work / "params.yaml",
        ingest={"root": str(work / "raw")},
        clean={"workers": 1, "overrides": str(work / "data/overrides.csv")},
    )
    assert rerun_clean(work) == 2
    assert "3 bad row(s)" in caplog.text
    assert "'maybe' is not keep, drop or relabel:<class>" in caplog.text
    assert "unknown class(es) ['rust']" in caplog.text
    assert "images/nowhere.png" in caplog.text
    assert not (work / "out/clean.parquet").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")
def test_page_renders_in_headless_chromium(cleaned: Path, tmp_path: Path) -> None:
    page = cleaned / "reports/clean_review.html"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "Clean review:" in dom and dom.count("<img") >= 1
    shot = tmp_path / "page.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000
