"""dvc.yaml is the architecture diagram: check it agrees with stages/, params.yaml and the CLIs."""

from __future__ import annotations

import importlib
import shlex
from typing import Any

import pytest
import yaml
from conftest import REPO, render

from pipeline.params import Params, load_params

# `dvc plots templates` of DVC 3.67
BUILT_IN_TEMPLATES = {
    "simple",
    "linear",
    "confusion",
    "confusion_normalized",
    "scatter",
    "scatter_jitter",
    "smooth",
    "bar_horizontal_sorted",
    "bar_horizontal",
}
# Scratch folders a stage keeps between runs: on the command line, deliberately not outputs
# (a fresh clone has none, and DVC would otherwise call the stage changed), git-ignored.
SCRATCH = {("train", "--state"): "models/train_state"}
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = load_params(REPO / "params.yaml")
STAGES = DVC["stages"]


def resolve(text: str) -> str:
    """Apply dvc.yaml's templating with the repo's params."""
    return render(text, PARAMS.model_dump())


def declared(stage: dict[str, Any], key: str) -> list[str]:
    return [resolve(next(iter(e)) if isinstance(e, dict) else e) for e in stage.get(key, [])]


def under(path: str, folder: str) -> bool:
    """`path` is `folder` or lies inside it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def cmd_paths(stage: dict[str, Any]) -> dict[str, str]:
    words = shlex.split(resolve(stage["cmd"]))
    return dict(zip(words[3::2], words[4::2], strict=True))


def test_one_stage_per_module_and_params_section() -> None:
    modules = {p.stem for p in (REPO / "stages").glob("*.py") if p.stem != "__init__"}
    assert set(STAGES) == modules
    assert set(STAGES) == set(Params.model_fields)


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_agrees_with_its_module(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    stage = STAGES[name]
    module = importlib.import_module(f"stages.{name}")
    assert callable(module.run) and callable(module.main)
    assert shlex.split(stage["cmd"])[:3] == ["python", "-m", f"stages.{name}"]
    assert stage["params"] == [name]
    deps = declared(stage, "deps")
    assert {"pipeline", f"stages/{name}.py"} <= set(deps)
    outputs = declared(stage, "outs") + declared(stage, "metrics") + declared(stage, "plots")
    flags = cmd_paths(stage)
    assert flags.pop("--params") == "params.yaml"
    for (owner, flag), path in SCRATCH.items():
        if owner == name:
            assert flags.pop(flag) == path
            assert not any(under(o, path) or under(path, o) for o in outputs + deps)
    for flag, path in flags.items():
        assert path in deps + outputs or any(under(o, path) for o in outputs), (
            f"{name}: {flag} {path} is not declared in dvc.yaml"
        )
    inputs = set(deps) - {"pipeline", f"stages/{name}.py"}
    # a stage reads the inputs its own params section names (ingest.root, clean.overrides)
    inputs -= {resolve(d) for d in stage["deps"] if d.startswith(f"${{{name}.")}
    assert inputs <= set(flags.values()), f"{name}: deps not passed on the command line"
    for output in outputs:
        assert any(under(output, p) for p in flags.values()), (
            f"{name}: {output} is not passed on the command line"
        )
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in [*flags, "--params"]:
        assert flag in help_text


def test_outputs_of_one_stage_feed_the_next() -> None:
    produced: set[str] = set()
    for name, stage in STAGES.items():
        data_deps = [d for d in declared(stage, "deps") if d.startswith(("data/interim", "models"))]
        assert set(data_deps) <= produced, f"{name} depends on something not produced before it"
        produced |= set(declared(stage, "outs"))


def test_plots_point_at_stage_outputs() -> None:
    outputs = {
        o for stage in STAGES.values() for key in ("outs", "plots") for o in declared(stage, key)
    }
    for plot in DVC["plots"]:
        files = [plot] if isinstance(plot, str) else list(next(iter(plot.values()))["y"])
        for file in files:
            assert any(under(file, o) for o in outputs), f"plot {file} is no stage's output"
    assert any(
        isinstance(p, dict) and next(iter(p.values())).get("template") == "confusion_counts"
        for p in DVC["plots"]
    )
    # custom templates are files in .dvc/plots/
    templates = [
        next(iter(p.values())).get("template") for p in DVC["plots"] if isinstance(p, dict)
    ]
    for template in set(templates) - BUILT_IN_TEMPLATES - {None}:
        assert (REPO / ".dvc/plots" / f"{template}.json").is_file(), template


def test_scratch_folders_are_git_ignored() -> None:
    ignored = (REPO / ".gitignore").read_text().splitlines()
    for path in SCRATCH.values():
        assert any(under(path, line.strip("/")) for line in ignored if line.startswith("/")), path
