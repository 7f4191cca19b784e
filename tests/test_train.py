"""The train stage as a process: a run killed with SIGKILL resumes and ends exactly as an
uninterrupted one; two CPU processes under torchrun (DDP, gloo) train one model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO, SHARED_WEIGHTS, read_curves, write_params

from pipeline.checkpoints import code_files, fingerprint
from pipeline.params import TrainParams

TRAIN = {"epochs": 6, "image_size": 48, "batch_size": 8, "lr": 0.003, "dropout": 0.3}


def stage(name: str, outputs: Path, params: Path, model: Path, **out: Path) -> list[str]:
    """Stage `name`'s CLI as dvc.yaml runs it on the split of `outputs`, with its own outputs
    (`--key=path` each) where `out` says."""
    return [
        "-m",
        f"stages.{name}",
        "--params",
        str(params),
        "--root",
        str(outputs / "raw"),
        "--manifest",
        str(outputs / "data/interim/split.parquet"),
        "--model",
        str(model),
        *(f"--{key}={path}" for key, path in out.items()),
    ]


def command(outputs: Path, params: Path, work: Path) -> list[str]:
    """The train stage's CLI with every output under `work`."""
    return stage(
        "train", outputs, params, work / "model.pt", live=work / "live", state=work / "state"
    )


def python(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def kill_after_first_saved_epoch(args: list[str], state: Path) -> None:
    """Start the stage and SIGKILL it as soon as an epoch's state has been saved."""
    process = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (state / "last.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no epoch saved within 300 s"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("outputs", [False], indirect=True)
def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_run(
    outputs: Path, tmp_path: Path
) -> None:
    # killed after epoch 1, two epochs left to resume; the defect map's head and GeM's
    # learnt power are in the state
    settings = {**TRAIN, "epochs": 3, "defect_map_weight": 0.5, "pool": "gem"}
    params = write_params(tmp_path / "params.yaml", train=settings)
    reference = python(command(outputs, params, tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    args = command(outputs, params, tmp_path / "killed")
    kill_after_first_saved_epoch(args, tmp_path / "killed/state")
    saved = torch.load(tmp_path / "killed/state/last.pt", weights_only=True)
    done = len(saved["history"])
    assert saved["params"]["epochs"] == settings["epochs"] and saved["classes"]  # self-describing
    assert 1 <= done < settings["epochs"], "the run ended before it was killed; make it longer"
    assert not (tmp_path / "killed/model.pt").exists()
    resumed = python(args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {done} " in resumed.stderr
    expected = torch.load(tmp_path / "reference/model.pt", weights_only=True)["state_dict"]
    actual = torch.load(tmp_path / "killed/model.pt", weights_only=True)["state_dict"]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert float(actual["avgpool.p"]) != 3.0  # resnet18's pool is GeM, and its power trained
    assert read_curves(tmp_path / "killed/live") == read_curves(tmp_path / "reference/live")
    # the summary (a DVC metrics file) does not show that the run was interrupted
    summaries = [
        json.loads((tmp_path / f"{run}/live/metrics.json").read_text())
        for run in ("killed", "reference")
    ]
    assert summaries[0] == summaries[1]


@pytest.mark.parametrize("outputs", [False], indirect=True)
def test_changed_params_start_afresh_instead_of_resuming(outputs: Path, tmp_path: Path) -> None:
    quick = {**TRAIN, "epochs": 1}  # a finished run's state is what a rerun would resume
    args = command(outputs, write_params(tmp_path / "a.yaml", train=quick), tmp_path)
    assert python(args).returncode == 0
    changed = {**quick, "lr": 0.001}
    args = command(outputs, write_params(tmp_path / "b.yaml", train=changed), tmp_path)
    rerun = python(args)
    assert rerun.returncode == 0, rerun.stderr
    assert "not resuming" in rerun.stderr and "resuming after" not in rerun.stderr


def test_a_state_saved_by_other_code_is_not_resumed(tmp_path: Path) -> None:
    """A code change makes DVC re-run the stage; the state the old code saved must not be
    resumed (a finished run's state would hand back the old model without training)."""
    manifest, module = tmp_path / "split.parquet", tmp_path / "decode.py"
    manifest.write_bytes(b"rows")
    module.write_text("size = 64\n")
    params = TrainParams.model_validate(
        {**yaml.safe_load((REPO / "params.yaml").read_text())["train"], **TRAIN}
    )
    before = fingerprint(manifest, params, 1, [module])
    assert fingerprint(manifest, params, 1, [module]) == before  # same code: resumable
    module.write_text("size = 64  # letterbox\n")
    assert fingerprint(manifest, params, 1, [module]) != before
    assert REPO / "pipeline/datasets.py" in code_files()  # the decode is part of the code


@pytest.mark.parametrize("outputs", [False, True], indirect=True, ids=["multiclass", "multilabel"])
def test_two_processes_under_torchrun_train_one_model(outputs: Path, tmp_path: Path) -> None:
    settings = {
        **TRAIN,
        "epochs": 2,
        "sampler": "weighted",
        "mix": "defect_cutmix",
        "defect_map_weight": 0.5,  # its head is part of the replicas DDP keeps identical
    }
    params = write_params(tmp_path / "params.yaml", train=settings)
    run = python(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            *command(outputs, params, tmp_path),
        ]
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert summary["processes"] == 2
    pattern = r"rank (\d) of 2: \d+ draws per epoch; weights checksum (\S+)"
    ranks = dict(re.findall(pattern, run.stderr))
    assert set(ranks) == {"0", "1"}, run.stderr
    assert ranks["0"] == ranks["1"]  # DDP kept the replicas identical
    assert torch.load(tmp_path / "model.pt", weights_only=True)["params"]["epochs"] == 2


def members(checkpoint: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """Each member's state dict out of an ensemble checkpoint's."""
    return [
        {
            key.removeprefix(f"members.{k}."): value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith(f"members.{k}.")
        }
        for k in range(checkpoint["members"])
    ]


@pytest.mark.parametrize("outputs", [False], indirect=True)
def test_an_ensemble_adds_seeded_members_to_the_single_model(outputs: Path, tmp_path: Path) -> None:
    quick = {**TRAIN, "epochs": 1}
    single = python(command(outputs, write_params(tmp_path / "one.yaml", train=quick), tmp_path))
    assert single.returncode == 0, single.stderr
    one = torch.load(tmp_path / "model.pt", weights_only=True)
    alone = json.loads((tmp_path / "live/metrics.json").read_text())
    params = write_params(
        tmp_path / "two.yaml", train={**quick, "ensemble": 2}, evaluate={"tta": "none"}
    )
    pair = python(command(outputs, params, tmp_path))
    assert pair.returncode == 0, pair.stderr
    # member 0 is the single run: its finished state is resumed, not trained again
    assert "resuming after epoch 1 " in pair.stderr
    two = torch.load(tmp_path / "model.pt", weights_only=True)
    assert (one["members"], two["members"]) == (1, 2)
    first, second = members(two)
    assert first.keys() == second.keys() == one["state_dict"].keys()
    assert all(torch.equal(first[key], one["state_dict"][key]) for key in first)
    assert not torch.equal(second["fc.1.weight"], first["fc.1.weight"])  # seed + 1
    assert len(read_curves(tmp_path / "live")["val/macro_f1"]) == 2  # both members' epochs
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert summary["members"] == 2 and set(summary["member"]) == {"1", "2"}
    assert summary["member"]["1"]["best_epoch"] == alone["best_epoch"]
    assert summary["member"]["1"]["val_macro_f1"] == alone["val"]["macro_f1"]
    # the val figures are the saved ensemble's: the evaluate stage finds the same on val
    names = ("metrics", "predictions", "thresholds", "plots", "figures")
    out = {name: tmp_path / "evaluate" / name for name in names}
    evaluate = python(stage("evaluate", outputs, params, tmp_path / "model.pt", **out))
    assert evaluate.returncode == 0, evaluate.stderr
    val = json.loads((tmp_path / "evaluate/metrics").read_text())["val"]
    assert {key: val[key] for key in summary["val"]} == summary["val"]


@pytest.mark.parametrize("outputs", [False], indirect=True)
def test_an_ensemble_member_trains_as_a_single_model_with_its_overrides(
    outputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(SHARED_WEIGHTS))  # member 2: pretrained, half frozen
    quick = {**TRAIN, "epochs": 1, "model": "mobilenet_v2"}
    changed = {
        "lr": 0.01,
        "mix": "mixup",
        "dropout": 0.0,
        "pretrained": True,
        "freeze_fraction": 0.5,
    }
    overrides = [{}, changed]
    pair = write_params(
        tmp_path / "pair.yaml", train={**quick, "ensemble": 2, "member_overrides": overrides}
    )
    run = python(command(outputs, pair, tmp_path / "pair"))
    assert run.returncode == 0, run.stderr
    seed = yaml.safe_load(pair.read_text())["train"]["seed"]
    for k, train in enumerate([quick, {**quick, **changed, "seed": seed + 1}]):
        alone = write_params(tmp_path / f"alone{k}.yaml", train=train)
        run = python(command(outputs, alone, tmp_path / f"alone{k}"))
        assert run.returncode == 0, run.stderr
    saved = torch.load(tmp_path / "pair/model.pt", weights_only=True)
    assert saved["params"]["member_overrides"] == overrides
    summary = json.loads((tmp_path / "pair/live/metrics.json").read_text())
    for k, member in enumerate(members(saved)):
        single = torch.load(tmp_path / f"alone{k}/model.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(member[key], single[key]) for key in single), k
        alone = json.loads((tmp_path / f"alone{k}/live/metrics.json").read_text())
        assert summary["member"][str(k + 1)]["frozen_tensors"] == alone["frozen_tensors"], k
    assert summary["member"]["1"]["frozen_tensors"] < summary["member"]["2"]["frozen_tensors"]
