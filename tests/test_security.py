"""Untrusted files are never run as code (issue 8): checkpoints load tensors and plain values
only, nothing in the pipeline unpickles or hands a shell a string, params that dvc.yaml puts
into a command are plain paths, and inputs stay inside the data root."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO, Payload

from pipeline.checkpoints import load_model, load_state
from pipeline.errors import ApexLoopError
from pipeline.masks import mask_path_for
from pipeline.params import Params, ParamsError, validate_section

SOURCES = sorted([*(REPO / "pipeline").glob("*.py"), *(REPO / "stages").glob("*.py")])


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    checkpoint = tmp_path / "model.pt"
    torch.save({"task": "multiclass", "classes": ["good", "x"], "x": Payload(marker)}, checkpoint)
    with pytest.raises(ApexLoopError, match=r"model\.pt: refused: .*Rerun train"):
        load_model(checkpoint)
    assert not marker.exists()


def test_a_resume_state_carrying_code_is_ignored_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    state = tmp_path / "last.pt"
    torch.save({"fingerprint": "f", "x": Payload(marker)}, state)
    assert load_state(state, "f") is None  # training starts afresh
    assert not marker.exists()


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted name, node) of every call, e.g. ('torch.load', ...)."""

    def name(node: ast.expr) -> str:
        if isinstance(node, ast.Attribute):
            return f"{name(node.value)}.{node.attr}"
        return node.id if isinstance(node, ast.Name) else "?"

    return [(name(node.func), node) for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _keyword(call: ast.Call, key: str) -> Any:
    for keyword in call.keywords:
        if keyword.arg == key:
            return ast.literal_eval(keyword.value)
    return None


UNSAFE_CALLS = re.compile(
    r"(^|\.)(pickle|cloudpickle|dill|marshal|shelve|joblib)\.(load|loads|open|Unpickler)$"
    r"|^(os\.system|os\.popen|eval|exec|yaml\.load|yaml\.unsafe_load|yaml\.full_load)$"
    r"|(^|\.)read_pickle$"
)


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_no_code_path_unpickles_or_builds_a_shell_command(source: Path) -> None:
    found = []
    for name, call in _calls(ast.parse(source.read_text(encoding="utf-8"))):
        where = f"{source.name}:{call.lineno} {name}"
        if UNSAFE_CALLS.search(name):
            found.append(where)
        if name == "torch.load" and _keyword(call, "weights_only") is not True:
            found.append(f"{where} without weights_only=True")
        if name.endswith("np.load") and _keyword(call, "allow_pickle"):
            found.append(f"{where} with allow_pickle")
        if name.startswith("subprocess.") and _keyword(call, "shell"):
            found.append(f"{where} with shell=True")
        if name.startswith("subprocess.") and call.args:
            command = call.args[0]
            if isinstance(command, ast.JoinedStr | ast.BinOp) or (
                isinstance(command, ast.Constant) and isinstance(command.value, str)
            ):
                found.append(f"{where}: a command string; give an argument list")
    assert found == []


def _templated_keys() -> set[tuple[str, str]]:
    """(section, key) of every ${section.key} in dvc.yaml: stage commands and the paths DVC
    hashes (a value can move from one to the other in an edit of dvc.yaml)."""
    return set(re.findall(r"\$\{(\w+)\.(\w+)\}", (REPO / "dvc.yaml").read_text()))


@pytest.mark.parametrize("value", ["data/raw; touch pwned", "my data", "$(id)", "a`b`", "-rf"])
def test_params_rendered_into_a_command_must_be_plain_paths(value: str) -> None:
    keys = _templated_keys()
    assert keys == {("ingest", "root"), ("clean", "overrides")}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, key in keys:
        model = Params.model_fields[section].annotation
        assert isinstance(model, type)
        validate_section(model, params[section], section, "params.yaml")  # as shipped: fine
        bad = {**params[section], key: value}
        with pytest.raises(ParamsError, match=rf"'{section}\.{key}'.*no spaces or shell"):
            validate_section(model, bad, section, "params.yaml")
        fine = {**params[section], key: "data/raw-2.v1/ünïcode_+x"}
        validate_section(model, fine, section, "params.yaml")


def test_a_mask_linked_outside_the_mask_folder_is_refused(tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    (masks / "crack").mkdir(parents=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"")
    (masks / "crack" / "a.png").symlink_to(outside)
    with pytest.raises(ApexLoopError, match="outside the data root"):
        mask_path_for(masks, "crack/a.jpg")
    assert mask_path_for(masks, "crack/b.jpg") == masks.resolve() / "crack/b.png"
