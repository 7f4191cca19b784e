"""`dvc push` / `dvc pull` of data and models through an S3 remote: moto's S3 server on 127.0.0.1.

A git + DVC copy of the project (raw data under `dvc add`, small params) runs `dvc repro` and
pushes; a fresh `git clone` (no DVC cache) pulls and must then hold byte-identical data and
models, with `dvc status` and `dvc repro` finding nothing to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from conftest import copy_project
from moto.server import ThreadedMotoServer

from pipeline import synth

STAGES = ["ingest", "clean", "split", "train", "evaluate"]
BUCKET = "apexloop-remote"
PREFIX = "store"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """moto's S3 server on a free port of 127.0.0.1 with an empty bucket: (endpoint, env).

    `env` is the environment for git and DVC: fake credentials, no AWS config files of the
    user's (the paths point at nothing), no analytics, a git identity without global config.
    """
    requests_log = logging.getLogger("werkzeug")  # one line per S3 request: hundreds
    level = requests_log.level
    requests_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        nothing = tmp_path_factory.mktemp("aws") / "absent"
        env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
        env.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_SHARED_CREDENTIALS_FILE=str(nothing),
            AWS_CONFIG_FILE=str(nothing),
            AWS_EC2_METADATA_DISABLED="true",
            NO_PROXY=no_proxy,
            no_proxy=no_proxy,
            DVC_NO_ANALYTICS="1",
            GIT_CONFIG_GLOBAL=str(nothing),
            GIT_AUTHOR_NAME="t",
            GIT_AUTHOR_EMAIL="t@example.com",
            GIT_COMMITTER_NAME="t",
            GIT_COMMITTER_EMAIL="t@example.com",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        )
        bucket_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint, env
    finally:
        server.stop()
        requests_log.setLevel(level)


def bucket_client(endpoint: str) -> Any:
    """A boto3 S3 client for the moto server, with the fake credentials given explicitly."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def sh(cwd: Path, env: dict[str, str], *args: str) -> str:
    """Run a command in `cwd`; fail with its output unless it exits 0; return stdout + stderr."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{output}"
    return output


def dvc(cwd: Path, env: dict[str, str], *args: str) -> str:
    return sh(cwd, env, sys.executable, "-m", "dvc", *args)


def use_remote(repo: Path, env: dict[str, str], endpoint: str) -> None:
    """Point the committed remote at the test server: a per-machine (`--local`) setting."""
    dvc(repo, env, "remote", "modify", "--local", "storage", "endpointurl", endpoint)


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, s3: tuple[str, dict[str, str]]) -> Path:
    """The project with DVC-tracked raw data, after `dvc repro`, a commit and `dvc push`."""
    endpoint, env = s3
    root = copy_project(tmp_path_factory.mktemp("origin"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(epochs=1, image_size=32, batch_size=16)
    params["split"]["min_groups_policy"] = "train_only"  # 60 images: rare classes have 1-2 parts
    params["clean"]["actions"]["label"] = "off"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    synth.generate(root / "data/raw", count=60, seed=3, multilabel=False)
    sh(root, env, "git", "init", "-q")
    dvc(root, env, "add", "data/raw")
    dvc(root, env, "remote", "add", "-d", "-f", "storage", f"s3://{BUCKET}/{PREFIX}")
    use_remote(root, env, endpoint)
    sh(root, env, "git", "add", "-A")
    sh(root, env, "git", "commit", "-qm", "project and data")  # DVCLive wants a commit
    dvc(root, env, "repro")
    sh(root, env, "git", "add", "-A")
    sh(root, env, "git", "commit", "-qm", "pipeline results")
    dvc(root, env, "push")
    return root


@pytest.fixture(scope="module")
def clone(
    tmp_path_factory: pytest.TempPathFactory, s3: tuple[str, dict[str, str]], origin: Path
) -> Path:
    """A fresh `git clone` of `origin` (no DVC cache of its own) after `dvc pull`."""
    endpoint, env = s3
    root = tmp_path_factory.mktemp("clone") / "project"
    sh(origin.parent, env, "git", "clone", "-q", str(origin), str(root))
    assert not (root / ".dvc/cache").exists()
    assert not (root / "data/raw").exists()
    assert not (root / ".dvc/config.local").exists()  # the endpoint stayed out of git
    use_remote(root, env, endpoint)
    dvc(root, env, "pull")
    return root


def tracked_paths(repo: Path) -> list[str]:
    """Every output path in dvc.lock, and the `dvc add`-ed raw data."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    return ["data/raw", *outs]


def file_digests(repo: Path, path: str) -> dict[str, str]:
    """sha256 of each file at `path` (a file, or a folder walked recursively), keyed by path;
    empty if nothing is there."""
    target = repo / path
    if not target.exists():
        return {}
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    return {
        p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


def cached_objects(repo: Path) -> set[str]:
    """Cache keys (`files/md5/ab/cdef...`) of the raw data and of every cached stage output:
    each file's, each folder's `.dir` listing and the files it lists."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    uncached = {
        path
        for stage in stages.values()
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind, [])
        if isinstance(entry, dict)
        for path, options in entry.items()
        if options.get("cache") is False
    }
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = [out for stage in lock["stages"].values() for out in stage.get("outs", [])]
    outs += yaml.safe_load((repo / "data/raw.dvc").read_text())["outs"]
    digests = [out["md5"] for out in outs if out["path"] not in uncached]
    for digest in [d for d in digests if d.endswith(".dir")]:
        listing = json.loads((repo / ".dvc/cache/files/md5" / digest[:2] / digest[2:]).read_text())
        digests += [entry["md5"] for entry in listing]
    return {f"files/md5/{digest[:2]}/{digest[2:]}" for digest in digests}


def test_push_puts_every_cached_output_and_the_raw_data_in_the_bucket(
    s3: tuple[str, dict[str, str]], origin: Path
) -> None:
    endpoint, _ = s3
    pages = bucket_client(endpoint).get_paginator("list_objects_v2")
    keys = {
        item["Key"].removeprefix(f"{PREFIX}/")
        for page in pages.paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/")
        for item in page.get("Contents", [])
    }
    expected = cached_objects(origin)
    assert len(expected) > 60  # the raw images alone are more
    assert keys == expected  # and nothing else: no run-cache without `dvc push --run-cache`


def test_a_fresh_clone_pulls_byte_identical_data_and_models(origin: Path, clone: Path) -> None:
    paths = tracked_paths(origin)
    assert {
        "data/raw",
        "data/interim/split.parquet",
        "models/model.pt",
        "models/thresholds.json",
        "data/processed/predictions.parquet",
    } <= set(paths)
    for path in paths:
        expected = file_digests(origin, path)
        assert expected, path
        assert file_digests(clone, path) == expected, path


def test_the_pulled_clone_is_up_to_date_and_repro_runs_nothing(
    s3: tuple[str, dict[str, str]], clone: Path
) -> None:
    _, env = s3
    assert "Data and pipelines are up to date." in dvc(clone, env, "status")
    out = dvc(clone, env, "repro")
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "Running stage" not in out
