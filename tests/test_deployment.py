"""prefect.yaml deployed on a real Prefect server, run by a real process worker: the
nightly-retrain deployment promotes a first model and refuses one worse than production."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from conftest import copy_project

STAGES = ["ingest", "clean", "split", "train", "evaluate"]
POOL = "apexloop-process"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
DEPLOYMENT = "retrain/nightly-retrain"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Prefect:
    """The CLI and REST API of one server, with the environment every process here gets:
    state in a temporary PREFECT_HOME, no telemetry."""

    def __init__(self, home: Path, port: int) -> None:
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # the worker polls for runs every 2 s
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, cwd: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
        """A long-running process in its own process group (so its children stop with it)."""
        with log.open("wb") as out:
            process = subprocess.Popen(
                args, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)
        self.logs.append(log)
        return process

    def log_tails(self) -> str:
        return "\n".join(f"--- {log.name}:\n{log.read_text()[-3000:]}" for log in self.logs)

    def cli(self, cwd: Path, *args: str) -> str:
        done = subprocess.run(
            ["prefect", *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"prefect {args}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.api}{path}", timeout=10) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.api}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.get("/health") is True:
                    return
            except OSError:
                pass
            assert all(p.poll() is None for p in self.processes), self.log_tails()
            time.sleep(0.5)
        raise AssertionError(f"no /api/health answer within {timeout} s")

    def stop_all(self) -> None:
        """SIGTERM each process group twice (a worker ignores the first), then SIGKILL."""
        for process in reversed(self.processes):
            for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # children left in the group


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prefect, Path]]:
    """A project deployed from its prefect.yaml onto a real server, and a worker on its pool;
    every process stopped afterwards."""
    base = tmp_path_factory.mktemp("deployment")
    project = base / "project"
    copy_project(project, extra=["prefect.yaml"])
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(epochs=1, image_size=32)
    params["split"]["min_groups_policy"] = "train_only"  # 64 images: rare classes have 1-2 parts
    params["flow"]["promote_max_miss_rate"] = 1.0  # any first model is promoted
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    synth = [sys.executable, "-m", "pipeline.cli", "synth", "--out", "data/raw", "--count", "64"]
    subprocess.run(synth, cwd=project, check=True, capture_output=True, timeout=300)
    (base / "home").mkdir()
    server = Prefect(base / "home", free_port())
    try:
        server.start(
            base, base / "server.log", "prefect", "server", "start", "--host", "127.0.0.1",
            "--port", server.api.split(":")[2].split("/")[0],
        )  # fmt: skip
        server.wait_healthy(timeout=120)
        server.cli(project, "work-pool", "create", POOL, "--type", "process")
        server.cli(project, "--no-prompt", "deploy", "--name", "nightly-retrain")
        server.start(project, base / "worker.log", "prefect", "worker", "start", "--pool", POOL)
        yield server, project
    finally:
        server.stop_all()
        for process in server.processes:
            assert process.poll() is not None
            assert not group_alive(process.pid), "a process the test started is still running"


def run_deployment(server: Prefect, project: Path) -> dict[str, Any]:
    """`prefect deployment run`, then wait for the flow run to finish; the flow run."""
    out = server.cli(project, "deployment", "run", DEPLOYMENT)
    flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        flow_run: dict[str, Any] = server.get(f"/flow_runs/{flow_run_id}")
        if flow_run["state"]["type"] in FINAL:
            assert flow_run["state"]["name"] == "Completed", server.log_tails()
            return flow_run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} unfinished after 300 s\n{server.log_tails()}")


def task_states(server: Prefect, flow_run_id: str) -> dict[str, str]:
    """The final state of each stage's task run and of the gate's (not clean's chunks').

    The server records task runs from the events the worker's flow sends, a moment after
    they happen, so a flow run can be finished before its last task run is recorded: wait
    until every stage and the gate have a final state.
    """
    wanted, deadline = [*STAGES, "promote"], time.monotonic() + 60
    while True:
        runs = server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        final = {
            run["name"].rsplit("-", 1)[0]: run["state"]["name"]
            for run in runs
            if run["state"] and run["state"]["type"] in FINAL
        }
        states = {name: state for name, state in final.items() if name in wanted}
        if len(states) == len(wanted) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def decision(server: Prefect, flow_run_id: str) -> str:
    found = server.post(
        "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    )
    assert [artifact["key"] for artifact in found] == ["apexloop-promotion"]
    text: str = found[0]["data"]
    return text


def test_deployment_has_the_nightly_schedule(prefect: tuple[Prefect, Path]) -> None:
    server, _ = prefect
    deployment = server.get(f"/deployments/name/{DEPLOYMENT}")
    assert deployment["work_pool_name"] == POOL
    assert deployment["entrypoint"] == "pipeline/flows.py:retrain"
    schedule = deployment["schedules"][0]["schedule"]
    assert (schedule["cron"], schedule["timezone"]) == ("0 2 * * *", "Europe/Berlin")
    # the server's scheduler turns it into runs at 02:00 Berlin time
    filter_ = {
        "deployments": {"id": {"any_": [deployment["id"]]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
    }
    deadline, scheduled = time.monotonic() + 60, []
    while not scheduled and time.monotonic() < deadline:
        scheduled = server.post("/flow_runs/filter", filter_)
        time.sleep(1)
    assert scheduled, "the scheduler created no runs"
    for run in scheduled:
        when = datetime.fromisoformat(run["expected_start_time"]).astimezone(
            ZoneInfo("Europe/Berlin")
        )
        assert (when.hour, when.minute) == (2, 0)


def test_a_run_promotes_then_a_worse_model_is_refused(prefect: tuple[Prefect, Path]) -> None:
    server, project = prefect
    production = project / "models/production"
    first = run_deployment(server, project)
    assert task_states(server, first["id"]) == {
        **dict.fromkeys(STAGES, "Completed"),
        "promote": "Completed",
    }
    for output in ("data/interim/split.parquet", "models/model.pt", "models/thresholds.json"):
        assert (project / output).is_file(), output
    record = json.loads((production / "record.json").read_text())
    assert record["flow_run"] == {"id": first["id"], "name": first["name"]}
    assert (production / "model.pt").read_bytes() == (project / "models/model.pt").read_bytes()
    assert "Model promoted" in decision(server, first["id"])

    # production now looks better than anything this run can produce
    metrics = json.loads((production / "metrics.json").read_text())
    metrics["operating"]["test"]["macro_f1"] = 1.0
    (production / "metrics.json").write_text(json.dumps(metrics, indent=2))
    before = {path.name: path.read_bytes() for path in production.iterdir()}
    second = run_deployment(server, project)
    assert task_states(server, second["id"]) == {
        **dict.fromkeys(STAGES, "Cached"),  # nothing changed since the first run
        "promote": "Completed",
    }
    text = decision(server, second["id"])
    assert "not promoted: production kept" in text
    assert "below production's 1.0000" in text
    assert {path.name: path.read_bytes() for path in production.iterdir()} == before
