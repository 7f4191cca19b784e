"""Kill-safety and determinism of `dvc repro` on the real pipeline (issue 8).

Determinism: two uninterrupted runs in separate copies give byte-identical outputs, so equal
dvc.lock files. Kill-safety: `dvc repro` is SIGKILLed (its whole process group, as a crash or
the OOM killer would) at seeded random points, at least once inside every stage; a watcher
reads every manifest the moment it appears, so a half-written one would be caught being
readable; each rerun resumes, and the final outputs equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, copy_project

from pipeline.manifest import read_manifest

log = logging.getLogger(__name__)
STAGES = ["ingest", "clean", "split", "train", "evaluate"]
MANIFESTS = {
    "data/interim/ingest.parquet": "images",
    "data/interim/clean.parquet": "images",
    "data/interim/issues.parquet": "issues",
    "data/interim/split.parquet": "split",
    "data/processed/predictions.parquet": "predictions",
}
JSONS = [
    "reports/clean.json",
    "reports/split.json",
    "reports/train/metrics.json",
    "reports/evaluate/metrics.json",
    "models/thresholds.json",
]
# What the watcher reads: the JSON files our stages write (atomically). DVCLive rewrites
# reports/train/metrics.json in place every epoch, so a reader can catch it empty; no stage
# reads it, and a killed train always runs again and rewrites it.
WATCHED_JSONS = [name for name in JSONS if name != "reports/train/metrics.json"]
KILLS = 10
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "DVC_NO_ANALYTICS": "1",
}
RUNNING = re.compile(r"Running stage '(\w+)'")


def sh(cwd: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Run:
    """One `dvc repro` in its own process group, its output lines time-stamped as they come."""

    project: Path
    lines: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.process = subprocess.Popen(
            ["dvc", "repro"], cwd=self.project, text=True, start_new_session=True,
            env={**ENV, "PYTHONUNBUFFERED": "1"},  # each line as it is printed, not at exit
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line))

    def started(self) -> dict[str, float]:
        """Stage -> when its 'Running stage' line came."""
        return {m[1]: t for t, line in list(self.lines) if (m := RUNNING.search(line))}

    def wait(self) -> int:
        code = self.process.wait(timeout=600)
        self.reader.join(timeout=10)
        return code

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.wait()

    def text(self) -> str:
        return "".join(line for _, line in self.lines)


def clear_torn_dvc_lock(project: Path) -> bool:
    """Remove DVC's own `.dvc/tmp/rwlock` when a kill tore it: DVC rewrites that file in place,
    so a SIGKILL landing mid-write leaves invalid JSON, and DVC then refuses to run until it is
    deleted (a known DVC limitation, treeverse/dvc#7615; the file is transient lock state, safe
    to delete with no dvc running). This test is about our outputs, not DVC's lock file."""
    lock = project / ".dvc/tmp/rwlock"
    try:
        json.loads(lock.read_text())
    except FileNotFoundError:
        return False
    except json.JSONDecodeError:
        lock.unlink()
        return True
    return False


class Watcher:
    """Reads every manifest and watched JSON output whenever it exists, until stopped; keeps
    what failed.

    Outputs are renamed into place whole, so every read must succeed or find no file. Each read
    is of a snapshot of the file's bytes: DVC removes outputs and our stages replace them while
    the watcher reads, and a reader that opens a path twice could see two different files."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.scratch = tempfile.TemporaryDirectory()
        self.failures: list[str] = []
        self.reads = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.is_set():
            for name, kind in MANIFESTS.items():
                self._check(name, lambda path, kind=kind: read_manifest(path, kind))
            for name in WATCHED_JSONS:
                self._check(name, lambda path: json.loads(path.read_bytes()))
            time.sleep(0.02)

    def _check(self, name: str, read: object) -> None:
        try:
            data = (self.project / name).read_bytes()  # one open: one file, whole or none
        except FileNotFoundError:
            return
        snapshot = Path(self.scratch.name) / Path(name).name
        snapshot.write_bytes(data)
        try:
            read(snapshot)  # type: ignore[operator]
            self.reads += 1
        except Exception as exc:  # a torn file was readable
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}")

    def close(self) -> list[str]:
        self.stop.set()
        self.thread.join(timeout=10)
        self.scratch.cleanup()
        return self.failures


def make_project(root: Path, raw: Path) -> Path:
    copy_project(root)
    shutil.copytree(raw, root / "data/raw")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(epochs=2, image_size=32)  # two epochs: a kill can land between them
    params["split"]["min_groups_policy"] = "train_only"  # 64 images: rare classes have 1-2 parts
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "project")
    return root


def outputs(project: Path) -> list[str]:
    """Every output file the pipeline wrote: those dvc.lock lists, folders expanded."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    names = [out["path"] for stage in lock["stages"].values() for out in stage["outs"]]
    files = [
        str(path.relative_to(project)) if path.is_file() else None
        for name in names
        for path in (
            [project / name] if (project / name).is_file() else (project / name).rglob("*")
        )
    ]
    return sorted(name for name in files if name is not None)


def stray_temporaries(project: Path) -> list[str]:
    """Temporary siblings left by atomic writes (`.<name>.<random>.tmp`)."""
    folders = [project / "data", project / "models", project / "reports"]
    return sorted(
        str(path.relative_to(project))
        for folder in folders
        for path in folder.rglob(".*.tmp")
        if "train_state" not in path.parts
    )


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "raw"
    sh(REPO, sys.executable, "-m", "pipeline.cli", "synth", "--out", str(root), "--count", "64")
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, raw: Path) -> tuple[Path, dict[str, float]]:
    """An uninterrupted `dvc repro`, and how long each stage took in it."""
    project = make_project(tmp_path_factory.mktemp("reference"), raw)
    run = Run(project)
    assert run.wait() == 0, run.text()
    end = time.monotonic()
    started = run.started()
    assert list(started) == STAGES, run.text()
    ends = [*list(started.values())[1:], end]
    return project, {stage: ends[i] - started[stage] for i, stage in enumerate(STAGES)}


def test_two_runs_with_the_same_seed_give_identical_outputs(
    tmp_path_factory: pytest.TempPathFactory, raw: Path, reference: tuple[Path, dict[str, float]]
) -> None:
    first, _ = reference
    second = make_project(tmp_path_factory.mktemp("second"), raw)
    sh(second, "dvc", "repro")
    names = outputs(first)
    assert set(MANIFESTS) | {"models/model.pt", "models/thresholds.json"} <= set(names)
    differing = [n for n in names if (first / n).read_bytes() != (second / n).read_bytes()]
    assert differing == []
    for name in JSONS:
        assert json.loads((first / name).read_text()) == json.loads((second / name).read_text())
    assert (first / "dvc.lock").read_text() == (second / "dvc.lock").read_text()


def test_sigkill_at_random_points_leaves_no_torn_output_and_a_rerun_completes_it(
    tmp_path_factory: pytest.TempPathFactory, raw: Path, reference: tuple[Path, dict[str, float]]
) -> None:
    first, durations = reference
    project = make_project(tmp_path_factory.mktemp("killed"), raw)
    rng = random.Random(8)
    killed_in: list[str] = []
    completed = torn_locks = 0
    watcher = Watcher(project)
    try:
        while len(killed_in) < KILLS or set(killed_in) != set(STAGES):
            assert len(killed_in) + completed < 3 * KILLS, f"kills keep missing: {killed_in}"
            # the earliest stage killed least often (a kill may land a stage late: DVC's own
            # time between stages varies from run to run)
            target = min(STAGES, key=lambda stage: (killed_in.count(stage), STAGES.index(stage)))
            lock = project / "dvc.lock"
            if lock.exists() and target in yaml.safe_load(lock.read_text())["stages"]:
                # the target stage is done: back to no outputs, nothing in the run cache, no
                # resume state
                for name in ["dvc.lock", "data/interim", "data/processed", "models", "reports"]:
                    path = project / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                shutil.rmtree(project / ".dvc/cache", ignore_errors=True)
            run = Run(project)
            while target not in run.started() and run.process.poll() is None:
                time.sleep(0.01)
            if run.process.poll() is not None:  # finished before reaching the stage
                assert run.wait() == 0, run.text()
                completed += 1
                continue
            time.sleep(rng.uniform(0.05, 0.7) * durations[target])
            if run.process.poll() is not None:
                assert run.wait() == 0, run.text()
                completed += 1
                continue
            run.kill()
            running = list(run.started())[-1]
            killed_in.append(running)
            torn_locks += clear_torn_dvc_lock(project)
            # after the kill: whatever output exists is whole
            for name, kind in MANIFESTS.items():
                if (project / name).exists():
                    read_manifest(project / name, kind)
            if (project / "models/model.pt").exists():
                torch.load(project / "models/model.pt", map_location="cpu", weights_only=True)
        final = Run(project)
        assert final.wait() == 0, final.text()
    finally:
        failures = watcher.close()
    assert failures == []
    assert watcher.reads > 0
    names = outputs(first)
    assert outputs(project) == names
    differing = [n for n in names if (first / n).read_bytes() != (project / n).read_bytes()]
    assert differing == []
    assert stray_temporaries(project) == []
    log.info(
        "kills by stage: %s; runs that completed before their kill: %d; DVC locks torn: %d",
        killed_in,
        completed,
        torn_locks,
    )
