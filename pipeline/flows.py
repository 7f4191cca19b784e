"""Prefect orchestration: the dvc.yaml stages as a content-cached flow, and a retraining flow
that promotes a new model only through a gate.

The only module that imports Prefect, so `dvc repro` never loads it. Nothing here restates a
path or a stage: each stage's command, deps and outputs are read from dvc.yaml (templates
rendered from params.yaml), its arguments parsed by the stage's own parser, and its task calls
`stages.<name>.call`, the function behind the CLI, so both paths write the same files.

A stage task's cache key hashes what DVC hashes: the content of its deps (files, and folders
walked in sorted order: the code in `pipeline/` and `stages/<name>.py`, the data, upstream
manifests and models), its params sections and its command. A cached result stands in for a
run only when every output it recorded is on disk unchanged; otherwise the task runs again
(`refresh_cache`) and overwrites the entry.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, cast

import yaml
from prefect import Task, flow, task

# how Prefect's own ResultStore reads a storage block synchronously (prefect pinned: 3.8.8)
from prefect._internal.compatibility.blocks import call_explicitly_sync_block_method
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.filesystems import WritableFileSystem
from prefect.results import ResultStore, get_default_result_storage, get_result_store
from prefect.runtime import flow_run
from prefect.serializers import JSONSerializer
from prefect.states import State
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from pipeline.checks import one_thread_per_worker
from pipeline.errors import ApexLoopError
from pipeline.params import FlowParams, load_section, read_params_file
from pipeline.paths import atomic_output, write_text_atomic

log = logging.getLogger("pipeline.flows")  # also when run as __main__

LIBRARY_LOGGERS = ("pipeline", "stages")  # their records go to the flow's run logs
IO_BOUND = ("ingest", "clean")  # retried with back-off on I/O errors
_TEMPLATE = re.compile(r"\$\{([^}]+)\}")


@dataclass(frozen=True)
class StageSpec:
    """One dvc.yaml stage with its templates rendered."""

    name: str
    argv: tuple[str, ...]  # the command's arguments after `python -m stages.<name>`
    deps: tuple[str, ...]
    sections: tuple[str, ...]  # the params sections it reads
    outs: tuple[str, ...]  # outs, metrics and plots


@dataclass(frozen=True)
class StageRecord:
    """What a stage task returns (and its cache keeps): the digest of every output it wrote
    and the stage's summary."""

    stage: str
    outputs: dict[str, str | None]
    summary: dict[str, Any]


# ---------------------------------------------------------------------------- dvc.yaml


def render(text: str, params: dict[str, Any]) -> str:
    """Apply dvc.yaml's `${section.key}` templating with values from the params mapping."""

    def value(match: re.Match[str]) -> str:
        node: Any = params
        for key in match.group(1).split("."):
            if not isinstance(node, dict) or key not in node:
                raise ApexLoopError(f"dvc.yaml: ${{{match.group(1)}}} is not in the params file")
            node = node[key]
        return str(node)

    return _TEMPLATE.sub(value, text)


def _entries(stage: dict[str, Any], key: str) -> list[str]:
    """The paths of a deps/outs/metrics/plots list, whose items are paths or {path: options}."""
    return [
        str(next(iter(entry)) if isinstance(entry, dict) else entry)
        for entry in stage.get(key) or []
    ]


def read_stages(project: Path, params: dict[str, Any]) -> list[StageSpec]:
    """The stages of `project`/dvc.yaml in order, rendered with `params`."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    specs = []
    for name, stage in stages.items():
        words = shlex.split(render(stage["cmd"], params))
        if words[:3] != ["python", "-m", f"stages.{name}"]:
            raise ApexLoopError(f"dvc.yaml: stage {name} must run `python -m stages.{name} ...`")
        sections = stage.get("params") or []
        if not all(isinstance(section, str) for section in sections):
            raise ApexLoopError(f"dvc.yaml: stage {name} must list whole params sections")
        outs = [
            render(path, params)
            for key in ("outs", "metrics", "plots")
            for path in _entries(stage, key)
        ]
        specs.append(
            StageSpec(
                name=name,
                argv=tuple(words[3:]),
                deps=tuple(render(path, params) for path in _entries(stage, "deps")),
                sections=tuple(sections),
                outs=tuple(outs),
            )
        )
    return specs


def parse_args(spec: StageSpec, params_path: Path) -> argparse.Namespace:
    """The stage's arguments as its own CLI parses them, reading `params_path`."""
    module = importlib.import_module(f"stages.{spec.name}")
    args = module.build_parser().parse_args(list(spec.argv))
    args.params = params_path
    return args


# ---------------------------------------------------------------------------- content hashes


@lru_cache(maxsize=65536)
def _file_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """sha256 of a file's bytes; memoised on its stat, as DVC's state database does."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _sha256_of_file(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def digest(path: Path) -> str | None:
    """sha256 of a file's bytes, or of a folder's files (relative path and digest, walked in
    sorted order, __pycache__ skipped); None if it does not exist."""
    if path.is_file():
        return _sha256_of_file(path)
    if not path.is_dir():
        return None
    total = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if file.is_file() and "__pycache__" not in relative.parts:
            total.update(f"{relative.as_posix()}\0{_sha256_of_file(file)}\n".encode())
    return total.hexdigest()


def _canonical_sha256(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def stage_key(spec: StageSpec, params: dict[str, Any], project: Path) -> str:
    """Cache key of a stage: its name and command, the content of its deps and its params
    sections. Paths are hashed as written in dvc.yaml, so a moved project keeps its keys."""
    material = {
        "stage": spec.name,
        "command": list(spec.argv),
        "deps": {dep: digest(project / dep) for dep in spec.deps},
        "params": {section: params.get(section) for section in spec.sections},
    }
    return f"apexloop-{spec.name}-{_canonical_sha256(material)}"


def output_digests(spec: StageSpec, project: Path) -> dict[str, str | None]:
    """Each declared output's digest; None if missing."""
    return {out: digest(project / out) for out in spec.outs}


@dataclass
class ContentCache(CachePolicy):
    """Prefect cache policy of the stage tasks: `stage_key` of the task's `spec` in its
    `project`, with the params file it is given (never the path strings' hash alone)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        project = Path(inputs["project"])
        params = read_params_file(project / inputs["params_path"])
        return stage_key(inputs["spec"], params, project)


# ---------------------------------------------------------------------------- task runners


def _integration(module: str, name: str, package: str) -> Callable[..., TaskRunner[Any]]:
    try:
        runner: Callable[..., TaskRunner[Any]] = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name != module.partition(".")[0]:
            raise  # the integration is there but broken: its own error says why
        raise ApexLoopError(
            f"flow.task_runner needs the {package} package: pip install {package} "
            f'(or pip install -e ".[{package.removeprefix("prefect-")}]")'
        ) from None
    return runner


def make_task_runner(settings: FlowParams) -> TaskRunner[Any]:
    """The task runner that `flow.task_runner` names; Dask and Ray load only when chosen."""
    workers, address = settings.workers, settings.cluster_address
    if settings.task_runner == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if settings.task_runner == "process":
        return ProcessPoolTaskRunner(max_workers=workers, initializer=one_thread_per_worker)
    if settings.task_runner == "dask":
        dask_runner = _integration("prefect_dask.task_runners", "DaskTaskRunner", "prefect-dask")
        if address:
            return dask_runner(address=address)
        return dask_runner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})
    ray_runner = _integration("prefect_ray.task_runners", "RayTaskRunner", "prefect-ray")
    if address:
        return ray_runner(address=address)
    return ray_runner(init_kwargs={"num_cpus": workers})


@task(name="clean-chunk", cache_policy=NO_CACHE, persist_result=False)
def apply_chunk(fn: Callable[[Any], Any], item: Any) -> Any:
    """One chunk of the clean stage's per-image work, as a Prefect task run."""
    return fn(item)


def map_on(runner: TaskRunner[Any], fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """A `pipeline.checks.Mapper` on a started task runner: one task run per item, results in
    item order."""
    futures = [runner.submit(apply_chunk, {"fn": fn, "item": item}) for item in items]
    return [future.result() for future in futures]


# ---------------------------------------------------------------------------- stage tasks


def _summary(result: Any) -> dict[str, Any]:
    if isinstance(result, dict):
        return result
    return {"rows": len(result)} if isinstance(result, list) else {}


def run_stage(
    spec: StageSpec,
    project: Path,
    params_path: Path,
    runner: FlowParams | None = None,
    upstream: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Run one stage through `stages.<name>.call` with its dvc.yaml arguments; the clean
    stage's image chunks run on the task runner `runner` names. `upstream` (the records of
    the stages it reads from) only links the runs in Prefect."""
    module = importlib.import_module(f"stages.{spec.name}")
    args = parse_args(spec, params_path)
    if runner is None:
        result = module.call(args)
    else:
        with make_task_runner(runner) as started:
            result = module.call(args, mapper=partial(map_on, started))
    return asdict(StageRecord(spec.name, output_digests(spec, project), _summary(result)))


# Results are plain JSON (the default would pickle them); `_trusted_entry` refuses any cache
# entry written otherwise, so a tampered entry in the result storage is never unpickled.
_SERIALIZER = JSONSerializer(object_encoder=None, object_decoder=None)
_STAGE = task(cache_policy=ContentCache(), persist_result=True, result_serializer=_SERIALIZER)(
    run_stage
)


def _is_io_error(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry only what a retry can fix: I/O errors, not bad data or params."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:  # any other failure is final: no retry
        return False
    return False


def stage_task(name: str, settings: FlowParams) -> Task[..., dict[str, Any]]:
    """The Prefect task of one stage; I/O-bound stages retry with a doubling delay."""
    if name not in IO_BOUND:
        return _STAGE.with_options(name=name)
    return _STAGE.with_options(
        name=name,
        retries=settings.retries,
        retry_delay_seconds=exponential_backoff(settings.retry_delay_seconds),
        retry_condition_fn=_is_io_error,
    )


def _outputs_changed(
    stage: Task[..., dict[str, Any]], spec: StageSpec, project: Path, params_path: Path
) -> bool:
    """Whether a cache entry exists for the stage's key but its outputs are missing or no
    longer what it recorded, or it is not plain JSON: then it must not stand in for a run."""
    key = stage_key(spec, read_params_file(project / params_path), project)
    store = get_result_store().update_for_task(stage)
    assert isinstance(store, ResultStore)  # a sync call returns the store itself
    storage = store.result_storage or get_default_result_storage(_sync=True)  # type: ignore[call-arg]
    assert isinstance(storage, WritableFileSystem)
    try:
        raw = call_explicitly_sync_block_method(storage, "read_path", (key,), {})
    except (ValueError, OSError):  # no entry for this key
        return False
    # Checked before anything deserializes the entry (Prefect's own exists() and read() do):
    # an entry not written by _SERIALIZER, e.g. a pickle left in the storage, is never loaded.
    try:
        serializer = json.loads(raw)["metadata"]["serializer"]
    except (ValueError, KeyError, TypeError):
        serializer = None
    if serializer != _SERIALIZER.model_dump(mode="json"):
        log.warning(
            "%s: cache entry %s not written as plain JSON: replaced, stage runs", spec.name, key
        )
        store.model_copy(update={"serializer": _SERIALIZER}).write({"untrusted": True}, key=key)
        return True
    recorded = store.read(key).result
    current = output_digests(spec, project)
    return None in current.values() or recorded.get("outputs") != current


def run_stages(
    project: Path, params_path: Path, settings: FlowParams
) -> tuple[dict[str, State[Any]], dict[str, dict[str, Any]]]:
    """Run (or take from the cache) every dvc.yaml stage in order; their final states and
    records by stage name. A failed stage fails the flow."""
    params = read_params_file(project / params_path)
    states: dict[str, State[Any]] = {}
    records: dict[str, dict[str, Any]] = {}
    specs = read_stages(project, params)
    for spec in specs:
        stage = stage_task(spec.name, settings)
        if _outputs_changed(stage, spec, project, params_path):
            log.info("%s: outputs missing or changed since cached: running it again", spec.name)
            stage = stage.with_options(refresh_cache=True)
        upstream = [
            records[other.name]
            for other in specs
            if other.name in records and set(other.outs) & set(spec.deps)
        ]
        runner = settings if spec.name == "clean" else None
        state = cast(
            State[dict[str, Any]],
            stage(spec, project, params_path, runner, upstream, return_state=True),
        )
        records[spec.name] = state.result()
        states[spec.name] = state
    return states, records


# ---------------------------------------------------------------------------- promotion gate

PRODUCTION_FILES = ("model.pt", "thresholds.json", "metrics.json")
RECORD = "record.json"  # written last: its presence means a complete promotion


@dataclass(frozen=True)
class Decision:
    """The promotion gate's verdict; metrics are the test side at the operating point."""

    promoted: bool
    reason: str
    new: dict[str, float | None]  # miss_rate, macro_f1
    production: dict[str, float | None] | None  # None: no production model yet
    max_miss_rate: float
    f1_tolerance: float


def headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The gate's figures from evaluate's metrics: test miss rate and macro-F1 at the
    operating point (the decisions the line ships)."""
    test = metrics.get("operating", {}).get("test", {})
    return {"miss_rate": test.get("miss_rate"), "macro_f1": test.get("macro_f1")}


def decide(
    new: dict[str, float | None], production: dict[str, float | None] | None, settings: FlowParams
) -> Decision:
    """Promote iff the new test miss rate is within the limit and its macro-F1 is not below
    production's by more than the tolerance (or there is no production model yet)."""
    limit, tolerance = settings.promote_max_miss_rate, settings.promote_f1_tolerance
    miss, f1 = new["miss_rate"], new["macro_f1"]
    verdict = partial(Decision, new=new, production=production)
    verdict = partial(verdict, max_miss_rate=limit, f1_tolerance=tolerance)
    if miss is None or f1 is None:
        return verdict(False, "the new model's test miss rate or macro-F1 is missing")
    if miss > limit:
        return verdict(
            False,
            f"test miss rate {miss:.4f} is above the limit {limit:.4f} "
            "(flow.promote_max_miss_rate)",
        )
    if production is None:
        return verdict(True, f"no production model yet; test miss rate {miss:.4f} <= {limit:.4f}")
    current = production.get("macro_f1")
    if current is None:
        return verdict(True, "the production model has no test macro-F1 to compare with")
    if round(current - f1, 9) > tolerance:
        return verdict(
            False,
            f"test macro-F1 {f1:.4f} is below production's {current:.4f} by more than "
            f"{tolerance:.4f} (flow.promote_f1_tolerance)",
        )
    return verdict(
        True,
        f"test miss rate {miss:.4f} <= {limit:.4f} and macro-F1 {f1:.4f} >= production's "
        f"{current:.4f} - {tolerance:.4f}",
    )


@dataclass(frozen=True)
class Production:
    """What the production folder holds: its model's metrics and the record of its promotion."""

    metrics: dict[str, Any]
    record: dict[str, Any]


def read_production(folder: Path) -> Production | None:
    """The production model, or None when no promotion completed there."""
    if not (folder / RECORD).is_file():
        return None
    return Production(
        json.loads((folder / "metrics.json").read_text(encoding="utf-8")),
        json.loads((folder / RECORD).read_text(encoding="utf-8")),
    )


def command_paths(spec: StageSpec) -> dict[str, Path]:
    """The `--flag path` pairs of a stage's command, by flag (without importing the stage)."""
    return {flag: Path(path) for flag, path in zip(spec.argv[::2], spec.argv[1::2], strict=True)}


def _git_commit(project: Path) -> str | None:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, timeout=30
        )
    except OSError:  # no git here
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def install(sources: dict[str, Path], folder: Path, record: dict[str, Any]) -> None:
    """Copy the files into `folder` (each via a temporary file and a rename), `record.json`
    last; the old record goes first, so an interrupted copy never reads as complete."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECORD).unlink(missing_ok=True)
    for name, source in sources.items():
        with atomic_output(folder / name) as tmp:
            shutil.copyfile(source, tmp)
    write_text_atomic(folder / RECORD, json.dumps(record, indent=2) + "\n")


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def decision_markdown(decision: Decision, run: dict[str, Any]) -> str:
    """The artifact: the verdict, why, and the figures compared."""
    production = decision.production or {}
    rows = [
        ("test miss rate", "miss_rate", f"≤ {decision.max_miss_rate:.4f}"),
        ("test macro-F1", "macro_f1", f"≥ production − {decision.f1_tolerance:.4f}"),
    ]
    table = "\n".join(
        f"| {label} | {_figure(decision.new[key])} | {_figure(production.get(key))} | {rule} |"
        for label, key, rule in rows
    )
    verdict = "promoted" if decision.promoted else "not promoted: production kept"
    return (
        f"## Model {verdict}\n\n{decision.reason}.\n\n"
        "| figure (operating point) | new | production | gate |\n|---|---|---|---|\n"
        f"{table}\n\nFlow run {run['name']} ({run['id']}); params sha256 "
        f"{run['params_sha256'][:12]}; git commit {run['git_commit'] or 'unknown'}.\n"
    )


def promote(project: Path, params_path: Path, settings: FlowParams) -> Decision:
    """The promotion gate after evaluate: compare the new model with production, copy the
    checkpoint, thresholds and metrics into `flow.production_dir` with a record of this run
    if it passes, keep production otherwise; publish the decision as a markdown artifact."""
    params = read_params_file(project / params_path)
    specs = {spec.name: spec for spec in read_stages(project, params)}
    paths = command_paths(specs["evaluate"])  # what evaluate read and wrote
    sources = {
        "model.pt": project / paths["--model"],
        "thresholds.json": project / paths["--thresholds"],
        "metrics.json": project / paths["--metrics"],
    }
    metrics = json.loads(sources["metrics.json"].read_text(encoding="utf-8"))
    folder = project / settings.production_dir
    production = read_production(folder)
    decision = decide(
        headline(metrics), headline(production.metrics) if production else None, settings
    )
    model_sha256 = _sha256_of_file(sources["model.pt"])
    if decision.promoted and production and production.record["files"]["model.pt"] == model_sha256:
        by = production.record["flow_run"]["name"]
        reason = f"production already holds this model (promoted by flow run {by})"
        decision = replace(decision, promoted=False, reason=reason)
    run = {
        "id": str(flow_run.id) if flow_run.id else None,
        "name": flow_run.name,
        "params_sha256": _canonical_sha256(params),
        "git_commit": _git_commit(project),
    }
    if decision.promoted:
        record = {
            "flow_run": {"id": run["id"], "name": run["name"]},
            "promoted_at_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_commit": run["git_commit"],
            "params_sha256": run["params_sha256"],
            "decision": asdict(decision),
            "files": {name: _sha256_of_file(path) for name, path in sources.items()},
        }
        install(sources, folder, record)
        log.info("model promoted to %s: %s", folder, decision.reason)
    else:
        log.warning("model not promoted, production kept: %s", decision.reason)
    create_markdown_artifact(
        markdown=decision_markdown(decision, run),
        key="apexloop-promotion",
        description="Promotion gate decision",
    )
    return decision


promote_task = task(name="promote", cache_policy=NO_CACHE, persist_result=False)(promote)


# ---------------------------------------------------------------------------- flows


@contextlib.contextmanager
def library_logs_to_run() -> Iterator[None]:
    """While the flow runs, send `pipeline.*` and `stages.*` records at INFO and above to its
    run logs, with the handler PREFECT_LOGGING_EXTRA_LOGGERS uses (whether or not that is set);
    afterwards the loggers are as they were."""
    handlers = logging.getLogger("prefect.extra").handlers
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    added = []
    for logger in loggers:
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        added += [(logger, h) for h in handlers if h not in logger.handlers]
    for logger, handler in added:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, handler in added:
            logger.removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _in_project(project_dir: str) -> Iterator[Path]:
    """Work in the project folder: dvc.yaml's and params.yaml's paths are relative to it."""
    project = Path(project_dir).resolve()
    with contextlib.chdir(project):
        yield project


@flow(name="pipeline")
def pipeline_flow(project_dir: str = ".", params_path: str = "params.yaml") -> dict[str, str]:
    """What `dvc repro` runs, as Prefect tasks with content caching; the final state of each
    stage's task run (Completed or Cached) by stage."""
    with library_logs_to_run(), _in_project(project_dir) as project:
        settings = load_section(project / params_path, "flow", FlowParams)
        states, _ = run_stages(project, Path(params_path), settings)
    return {name: str(state.name) for name, state in states.items()}


@flow(name="retrain")
def retrain(project_dir: str = ".", params_path: str = "params.yaml") -> dict[str, Any]:
    """The stages, then the promotion gate: the stages' final states and the decision."""
    with library_logs_to_run(), _in_project(project_dir) as project:
        settings = load_section(project / params_path, "flow", FlowParams)
        states, _ = run_stages(project, Path(params_path), settings)
        decision = promote_task(project, Path(params_path), settings)
    return {
        "stages": {name: str(state.name) for name, state in states.items()},
        "promotion": asdict(decision),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.flows run|serve`: one retraining run now, or serve the nightly
    schedule from this process (the alternative to prefect.yaml's work-pool deployment)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["run", "serve"])
    parser.add_argument("--project", default=os.getcwd())
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--cron", default="0 2 * * *")
    parser.add_argument("--timezone", default="Europe/Berlin")
    args = parser.parse_args(argv)
    parameters = {"project_dir": args.project, "params_path": args.params}
    # the flow as pipeline.flows defines it, not this module run as __main__
    flows = importlib.import_module("pipeline.flows")
    if args.command == "run":
        flows.retrain(**parameters)
        return 0
    from prefect.schedules import Cron

    flows.retrain.serve(
        name="nightly-retrain",
        schedules=[Cron(args.cron, timezone=args.timezone)],
        parameters=parameters,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
