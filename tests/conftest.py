"""Shared test helpers: params files derived from the repository's params.yaml."""

from __future__ import annotations

import csv
import importlib
import os
import re
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import settings

from pipeline import synth

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights"  # torchvision's cache: TORCH_HOME

# The suite is a gate: property tests draw the same examples on every run (a failure found
# once is found again). HYPOTHESIS_PROFILE=explore searches afresh with more examples.
settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def write_params(path: Path, **sections: dict[str, Any]) -> Path:
    """Write the repo's params.yaml to `path` with each named section updated by its dict."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    # the repo's (empty) review decisions, wherever the test runs from
    params["clean"]["overrides"] = str(REPO / params["clean"]["overrides"])
    for name, changes in sections.items():
        params[name].update(changes)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def table_source(root: Path, task: str = "multiclass") -> dict[str, Any]:
    """Ingest settings for `<root>/labels.csv` (path,label,group) over `<root>/images`."""
    return {
        "root": str(root),
        "task": task,
        "source": "table",
        "images": "images",
        "table": "labels.csv",
        "masks": None,
        "group_column": "group",
        "boxes_column": None,
    }


def render(text: str, params: dict[str, Any]) -> str:
    """Apply dvc.yaml's ${section.key} templating with values from a params mapping."""

    def value(match: re.Match[str]) -> str:
        section, key = match.group(1).split(".")
        return str(params[section][key])

    return re.sub(r"\$\{([a-z_]+\.[a-z_]+)\}", value, text)


class Payload:
    """Unpickling this would create a file: proof the code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


# what a copy of the project needs to run `dvc repro` or the Prefect flow elsewhere
PROJECT_FILES = [
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots",
    "data/overrides.csv",
    "pipeline",
    "stages",
]


def copy_project(root: Path, extra: Sequence[str] = ()) -> Path:
    """Copy PROJECT_FILES (and `extra` paths) of this repository into `root`; returns root."""
    for name in [*PROJECT_FILES, *extra]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


def run_dvc_stages(work: Path, only: Sequence[str] | None = None) -> None:
    """Run the dvc.yaml stages (all, or those named in `only`) in order, in-process in `work`,
    with the command DVC would run.

    `work` holds params.yaml; paths in the commands are relative to it, as under `dvc repro`.
    """
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    previous = Path.cwd()
    os.chdir(work)
    try:
        for name, stage in stages.items():
            if only is not None and name not in only:
                continue
            words = shlex.split(render(stage["cmd"], params))
            assert importlib.import_module(f"stages.{name}").main(words[3:]) == 0, name
    finally:
        os.chdir(previous)


def run_pipeline(work: Path, multilabel: bool) -> Path:
    """Generate data and run all five stages as dvc.yaml declares them; returns `work`."""
    synth.generate(work / "raw", count=60, seed=3, multilabel=multilabel)
    ingest = {"root": str(work / "raw")}
    if multilabel:
        ingest.update(task="multilabel", label_column="labels")
    train = {"epochs": 1, "image_size": 32, "batch_size": 16}
    # 60 images: rare classes have 1-2 parts, too few for three sides
    split = {"min_groups_policy": "train_only"}
    evaluate = {"tta": "flips"}  # so predict must average the same four views to agree
    write_params(work / "params.yaml", ingest=ingest, split=split, train=train, evaluate=evaluate)
    run_dvc_stages(work)
    return work


@pytest.fixture(scope="session", params=[False, True], ids=["multiclass", "multilabel"])
def outputs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All five stages run on tiny generated data (60 images), once per test session."""
    return run_pipeline(tmp_path_factory.mktemp("run"), request.param)


def read_curves(live: Path) -> dict[str, list[float]]:
    """DVCLive's per-epoch TSVs under `live` as {metric: values in step order}."""
    curves = {}
    for tsv in sorted((live / "plots/metrics").rglob("*.tsv")):
        with tsv.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        name = tsv.relative_to(live / "plots/metrics").with_suffix("").as_posix()
        assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1)), name
        curves[name] = [float(r[tsv.stem]) for r in rows]
    return curves
