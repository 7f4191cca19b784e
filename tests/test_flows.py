"""The Prefect flow (pipeline/flows.py) against a real local Prefect API (prefect_test_harness):
the same outputs as `dvc repro`, caching by content, the clean stage's work on task runners,
the promotion gate and its artifact, library logs in the run logs."""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

# Prefect reads these when first imported: no telemetry (no network here), nothing in ~/.prefect.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_HOME"] = _HOME = tempfile.mkdtemp(prefix="apexloop-prefect-")
atexit.register(shutil.rmtree, _HOME, True)

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from conftest import REPO, Payload, copy_project  # noqa: E402
from PIL import Image  # noqa: E402
from prefect import flow  # noqa: E402
from prefect.artifacts import Artifact  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId  # noqa: E402
from prefect.logging.handlers import APILogHandler  # noqa: E402
from prefect.results import ResultStore, get_result_store  # noqa: E402
from prefect.serializers import PickleSerializer  # noqa: E402
from prefect.states import Failed  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from pipeline import flows  # noqa: E402
from pipeline.errors import ApexLoopError  # noqa: E402
from pipeline.params import CleanParams, FlowParams, ParamsError, load_params, load_section  # noqa: E402
from stages import clean  # noqa: E402

STAGES = ["ingest", "clean", "split", "train", "evaluate"]
# outputs that must be byte-identical between `dvc repro` and the flow
SAME_BYTES = [
    "models/model.pt",
    "data/interim/ingest.parquet",
    "data/interim/clean.parquet",
    "data/interim/issues.parquet",
    "data/interim/split.parquet",
    "data/processed/predictions.parquet",
    "reports/review_queue.csv",
    "models/thresholds.json",
]
SAME_JSON = [
    "reports/clean.json",
    "reports/split.json",
    "reports/train/metrics.json",
    "reports/evaluate/metrics.json",
]
CLEAN_OUTPUTS = ["out", "issues", "metrics", "review", "queue"]


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com")
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def make_project(root: Path, raw: Path) -> Path:
    """A copy of the project with the tiny data set `raw` and quick training params."""
    copy_project(root)
    shutil.copytree(raw, root / "data/raw")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(epochs=1, image_size=32)
    params["split"]["min_groups_policy"] = "train_only"  # 64 images: rare classes have 1-2 parts
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def set_param(project: Path, section: str, key: str, value: Any) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_flow(project: Path) -> dict[str, str]:
    """The pipeline flow on `project`: each stage's final task-run state name."""
    states: dict[str, str] = flows.pipeline_flow(project_dir=str(project))
    assert list(states) == STAGES
    return states


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    """A Prefect API for this module's tests, stopped after them: its client's event and log
    workers would otherwise live on through the rest of the session, and websockets' keepalive
    pings (random.getrandbits) then change the global `random` state in the middle of other
    modules' hypothesis draws (HypothesisDeprecationWarning in test_mixing, test_operating)."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    sh(
        REPO,
        sys.executable,
        "-m",
        "pipeline.cli",
        "synth",
        "--out",
        str(root / "raw"),
        "--count",
        "64",
    )
    return root / "raw"


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory, raw: Path) -> Path:
    """The project after a real `dvc repro` (each stage in its own process)."""
    root = make_project(tmp_path_factory.mktemp("dvc"), raw)
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "project")
    sh(root, "dvc", "repro")
    return root


@pytest.fixture(scope="module")
def flow_project(
    tmp_path_factory: pytest.TempPathFactory, raw: Path, prefect_api: None
) -> Iterator[tuple[Path, dict[str, str]]]:
    """The same project after a first (cold) run of the flow, and that run's states."""
    root = make_project(tmp_path_factory.mktemp("flow"), raw)
    # as many torch threads as the fresh processes of `dvc repro` use (other tests may change it)
    fresh = sh(REPO, sys.executable, "-c", "import torch; print(torch.get_num_threads())")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(fresh))
    try:
        yield root, run_flow(root)
    finally:
        torch.set_num_threads(threads)


def test_flow_writes_what_dvc_repro_writes(
    dvc_project: Path, flow_project: tuple[Path, dict[str, str]]
) -> None:
    project, first = flow_project
    assert first == dict.fromkeys(STAGES, "Completed")
    for name in SAME_BYTES:
        assert (project / name).read_bytes() == (dvc_project / name).read_bytes(), name
    for name in SAME_JSON:
        assert json.loads((project / name).read_text()) == json.loads(
            (dvc_project / name).read_text()
        ), name
    # every declared output is there, in the same places
    specs = flows.read_stages(project, yaml.safe_load((project / "params.yaml").read_text()))
    outputs = [out for spec in specs for out in spec.outs]
    assert "models/model.pt" in outputs
    assert [out for out in outputs if not (project / out).exists()] == []
    assert [out for out in outputs if not (dvc_project / out).exists()] == []


def test_second_run_is_all_cached(flow_project: tuple[Path, dict[str, str]]) -> None:
    project, _ = flow_project
    assert run_flow(project) == dict.fromkeys(STAGES, "Cached")


def test_learning_rate_change_reruns_train_and_evaluate_only(
    flow_project: tuple[Path, dict[str, str]],
) -> None:
    project, _ = flow_project
    model = (project / "models/model.pt").read_bytes()
    set_param(project, "train", "lr", 0.003)
    states = run_flow(project)
    assert states == {
        "ingest": "Cached",
        "clean": "Cached",
        "split": "Cached",
        "train": "Completed",
        "evaluate": "Completed",
    }
    assert (project / "models/model.pt").read_bytes() != model
    # a flow-only param is no stage's: nothing runs
    set_param(project, "flow", "workers", 1)
    assert run_flow(project) == dict.fromkeys(STAGES, "Cached")


def test_changed_raw_image_reruns_from_ingest(flow_project: tuple[Path, dict[str, str]]) -> None:
    project, _ = flow_project
    image = sorted((project / "data/raw/images/good").glob("*.png"))[0]
    with Image.open(image) as opened:
        pixels = opened.convert("RGB")
    pixels.putpixel((3, 3), tuple(255 - v for v in pixels.getpixel((3, 3))))  # type: ignore[union-attr,misc]
    pixels.save(image)
    states = run_flow(project)
    assert states["ingest"] == "Completed"
    assert states["clean"] == "Completed"  # the image's pixel hash is in the issues manifest
    assert states["train"] == "Completed"  # train and evaluate read the raw images too
    assert states["evaluate"] == "Completed"
    assert run_flow(project) == dict.fromkeys(STAGES, "Cached")


def test_missing_or_edited_output_reruns_its_stage(
    flow_project: tuple[Path, dict[str, str]],
) -> None:
    project, _ = flow_project
    (project / "reports/split.json").unlink()
    states = run_flow(project)
    assert states == {**dict.fromkeys(STAGES, "Cached"), "split": "Completed"}
    assert (project / "reports/split.json").is_file()
    # an output changed on disk is not what the cache entry recorded: that stage runs again
    thresholds = project / "models/thresholds.json"
    expected = thresholds.read_bytes()
    thresholds.write_text("{}\n")
    states = run_flow(project)
    assert states == {**dict.fromkeys(STAGES, "Cached"), "evaluate": "Completed"}
    assert thresholds.read_bytes() == expected


def test_a_pickled_cache_entry_is_never_loaded_the_stage_runs_instead(
    flow_project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    project, _ = flow_project
    params = yaml.safe_load((project / "params.yaml").read_text())
    spec = next(s for s in flows.read_stages(project, params) if s.name == "split")
    key = flows.stage_key(spec, params, project)
    settings = load_section(project / "params.yaml", "flow", FlowParams)
    store = get_result_store().update_for_task(flows.stage_task("split", settings))
    assert isinstance(store, ResultStore) and store.exists(key)
    # the entry as someone with write access to the result storage could leave it
    marker = tmp_path / "ran"
    store.model_copy(update={"serializer": PickleSerializer()}).write(Payload(marker), key=key)
    states = run_flow(project)
    assert not marker.exists()
    assert states == {**dict.fromkeys(STAGES, "Cached"), "split": "Completed"}
    assert run_flow(project) == dict.fromkeys(STAGES, "Cached")  # rewritten as plain JSON


def test_library_logs_reach_the_run_logs(
    flow_project: tuple[Path, dict[str, str]],
) -> None:
    project, _ = flow_project
    set_param(project, "split", "seed", 18)  # something runs, and logs
    state = flows.pipeline_flow(project_dir=str(project), return_state=True)
    assert state.is_completed()
    APILogHandler().flush()  # send the queued records now
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    names = {log.name for log in logs}
    assert "stages.split" in names
    assert any(log.name == "stages.split" and "split {'train'" in log.message for log in logs)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_clean_on_a_task_runner_matches_the_process_pool(
    dvc_project: Path, tmp_path: Path, kind: str, prefect_api: None
) -> None:
    """The clean stage with its chunks on Prefect's task runner writes what `dvc repro`'s
    run (chunks in clean.workers local processes) wrote."""
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    spec = next(s for s in flows.read_stages(dvc_project, params) if s.name == "clean")
    written = flows.parse_args(spec, Path("params.yaml"))  # where `dvc repro` wrote them
    args = argparse.Namespace(**vars(written))
    for name in CLEAN_OUTPUTS:  # the same inputs; outputs beside the test
        setattr(args, name, tmp_path / getattr(written, name).name)
    settings = load_section(dvc_project / "params.yaml", "flow", FlowParams)
    settings = settings.model_copy(update={"task_runner": kind})
    assert load_section(dvc_project / "params.yaml", "clean", CleanParams).workers == 2

    @flow
    def clean_on_runner() -> None:
        with flows.make_task_runner(settings) as runner:
            clean.call(args, mapper=partial(flows.map_on, runner))

    previous = Path.cwd()
    os.chdir(dvc_project)  # params paths (clean.overrides) are relative to the project
    try:
        clean_on_runner()
    finally:
        os.chdir(previous)
    for name in CLEAN_OUTPUTS:
        expected = (dvc_project / getattr(written, name)).read_bytes()
        assert getattr(args, name).read_bytes() == expected, name


def test_cluster_runners_load_only_when_chosen() -> None:
    settings = load_section(REPO / "params.yaml", "flow", FlowParams)
    for kind, package in (("dask", "prefect_dask"), ("ray", "prefect_ray")):
        chosen = settings.model_copy(update={"task_runner": kind})
        if importlib.util.find_spec(package) is None:
            with pytest.raises(ApexLoopError, match=f"pip install {package.replace('_', '-')}"):
                flows.make_task_runner(chosen)
        else:
            assert type(flows.make_task_runner(chosen)).__module__.startswith(package)


def test_io_bound_stages_retry_with_back_off_on_io_errors_only() -> None:
    settings = load_section(REPO / "params.yaml", "flow", FlowParams)
    settings = settings.model_copy(update={"retries": 3, "retry_delay_seconds": 2})
    for name in ("ingest", "clean"):
        stage = flows.stage_task(name, settings)
        assert (stage.retries, stage.retry_delay_seconds) == (3, [2, 4, 8])
        retry = stage.retry_condition_fn
        assert retry is not None
        assert retry(stage, None, Failed(data=OSError("network share gone")))  # type: ignore[arg-type]
        assert not retry(stage, None, Failed(data=ApexLoopError("bad row")))  # type: ignore[arg-type]
    assert flows.stage_task("train", settings).retries == 0


# ---------------------------------------------------------------------------- promotion gate


def gate(limit: float = 0.05, tolerance: float = 0.01) -> FlowParams:
    settings = load_section(REPO / "params.yaml", "flow", FlowParams)
    return settings.model_copy(
        update={"promote_max_miss_rate": limit, "promote_f1_tolerance": tolerance}
    )


def test_gate_promotes_when_there_is_no_production() -> None:
    decision = flows.decide({"miss_rate": 0.02, "macro_f1": 0.5}, None, gate())
    assert decision.promoted
    assert "no production model yet" in decision.reason


def test_gate_refuses_a_miss_rate_over_the_limit() -> None:
    decision = flows.decide({"miss_rate": 0.06, "macro_f1": 0.9}, None, gate(limit=0.05))
    assert not decision.promoted
    assert "miss rate 0.0600 is above the limit 0.0500" in decision.reason


def test_gate_compares_macro_f1_with_production_within_the_tolerance() -> None:
    new = {"miss_rate": 0.0, "macro_f1": 0.70}
    within = flows.decide(new, {"miss_rate": 0.0, "macro_f1": 0.71}, gate(tolerance=0.01))
    assert within.promoted  # exactly the tolerance below production
    beyond = flows.decide(new, {"miss_rate": 0.0, "macro_f1": 0.72}, gate(tolerance=0.01))
    assert not beyond.promoted
    assert "below production's 0.7200 by more than 0.0100" in beyond.reason
    assert flows.decide(new, {"miss_rate": 0.0, "macro_f1": 0.5}, gate()).promoted


def test_gate_refuses_missing_figures() -> None:
    assert not flows.decide({"miss_rate": None, "macro_f1": 0.9}, None, gate()).promoted


def test_promote_copies_a_better_model_and_keeps_production_for_a_worse_one(
    flow_project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    project, _ = flow_project
    settings = gate(limit=1.0).model_copy(update={"production_dir": str(tmp_path / "prod")})

    @flow
    def gate_flow() -> flows.Decision:
        decision: flows.Decision = flows.promote_task(project, Path("params.yaml"), settings)
        return decision

    first = gate_flow(return_state=True)
    decision = first.result()
    assert decision.promoted
    production = tmp_path / "prod"
    record = json.loads((production / "record.json").read_text())
    assert record["flow_run"]["id"] == str(first.state_details.flow_run_id)
    for name in ("model.pt", "thresholds.json", "metrics.json"):
        assert (production / name).read_bytes() == (project / _source(name)).read_bytes()
    artifact = Artifact.get("apexloop-promotion")
    assert artifact is not None and artifact.flow_run_id == first.state_details.flow_run_id
    assert "Model promoted" in str(artifact.data)

    # production is now better than the new model by more than the tolerance
    metrics = json.loads((production / "metrics.json").read_text())
    metrics["operating"]["test"]["macro_f1"] = decision.new["macro_f1"] + 0.5
    (production / "metrics.json").write_text(json.dumps(metrics))
    before = {p.name: p.read_bytes() for p in production.iterdir()}
    second = gate_flow(return_state=True)
    refused = second.result()
    assert not refused.promoted
    assert "below production's" in refused.reason
    assert {p.name: p.read_bytes() for p in production.iterdir()} == before
    artifact = Artifact.get("apexloop-promotion")
    assert artifact is not None and artifact.flow_run_id == second.state_details.flow_run_id
    assert "not promoted: production kept" in str(artifact.data)
    assert "| test macro-F1 |" in str(artifact.data)

    # the same model passing the gate again: nothing to copy, the record keeps its run
    metrics_out = (project / _source("metrics.json")).read_bytes()
    (production / "metrics.json").write_bytes(metrics_out)
    same = gate_flow()
    assert not same.promoted
    assert (
        f"production already holds this model (promoted by flow run {record['flow_run']['name']})"
        in same.reason
    )
    assert json.loads((production / "record.json").read_text()) == record


def _source(name: str) -> str:
    return {
        "model.pt": "models/model.pt",
        "thresholds.json": "models/thresholds.json",
        "metrics.json": "reports/evaluate/metrics.json",
    }[name]


def test_flow_params_are_validated_and_belong_to_no_stage(tmp_path: Path) -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert all("flow" not in stage["params"] for stage in stages.values())
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["flow"]["task_runer"] = "thread"
    data["flow"]["promote_f1_tolerance"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError) as error:
        load_params(tmp_path / "params.yaml")
    assert "unknown key 'flow.task_runer'" in str(error.value)
    assert "bad value for 'flow.promote_f1_tolerance' (got 2)" in str(error.value)
