"""Pull-request report: the working tree's params, metrics and plots against a git revision.

Everything comes from DVC itself (`dvc params diff`, `dvc metrics diff --all`, `dvc plots diff`),
run as a subprocess in the DVC project root, so the report shows exactly what `dvc` would.
The result is GitHub-flavoured markdown for a pull-request comment.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ApexLoopError
from pipeline.paths import write_text_atomic

log = logging.getLogger(__name__)

# Shown first in each metrics table when they sit at the top level or under val/test;
# everything else (per-class figures, train-side numbers, counts) folds into <details>.
HEADLINE_WORDS = ("accuracy", "macro_f1", "miss_rate", "overkill_rate")
HEADLINE_SPLITS = ("val", "test")
# where headline figures sit: the top level, each split, each split at the operating point
HEADLINE_PARENTS = [(), *[(split,) for split in HEADLINE_SPLITS]]
HEADLINE_PARENTS += [("operating", split) for split in HEADLINE_SPLITS] + [("train_val_gap",)]
MAX_CELL = 80  # characters; longer values (lists, long strings) are cut with an ellipsis
ABSENT = "—"
# DVC's stderr when it skips a revision: per file ("failed to load metrics in revision 'HEAD'")
# and as a summary ("failed to load some metrics for following revisions: 'HEAD, workspace'")
_FAILED_ONE = re.compile(r"failed to load \w+ in revision '([^']*)'")
_FAILED_SOME = re.compile(r"failed to load some \w+ for following revisions: '([^']*)'")
METRICS_HEADER = "| Metric | Base | New | Δ |\n|---|--:|--:|--:|"


class ReportError(ApexLoopError):
    """git or DVC could not produce the comparison; the message carries their stderr."""


@dataclass(frozen=True)
class Change:
    """One params or metrics key: its value at the base revision and in the working tree.

    `old`/`new` are None where the key is absent on that side; `diff` is DVC's new - old for
    numbers, None otherwise.
    """

    key: str
    old: Any
    new: Any
    diff: Any = None

    @property
    def is_changed(self) -> bool:
        return bool(self.old != self.new)


@dataclass(frozen=True)
class Comparison:
    """What the report shows; every mapping is keyed by the params/metrics file path."""

    base: str
    base_commit: str
    params: dict[str, list[Change]]
    metrics: dict[str, list[Change]]
    images: list[str]
    warnings: list[str]
    plots_html: Path | None = None


def run_command(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command (an argument list, never a shell string) and capture its text output."""
    try:
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ReportError(f"{args[0]!r} was not found: install it or put it on PATH") from exc


def find_project_root(start: Path) -> Path:
    """The DVC project holding `start`: the nearest folder with `.dvc/` inside the git work tree."""
    result = run_command(["git", "rev-parse", "--show-toplevel"], start)
    if result.returncode != 0:
        raise ReportError(
            f"{start} is not inside a git repository ({result.stderr.strip()}); "
            "run `apexloop report` from a clone of the project"
        )
    top = Path(result.stdout.strip()).resolve()
    for folder in [start.resolve(), *start.resolve().parents]:
        if (folder / ".dvc").is_dir():
            return folder
        if folder == top:
            break
    raise ReportError(
        f"no DVC project (a .dvc folder) between {start} and the git root {top}; "
        "run `apexloop report` inside the project (or `dvc init` one)"
    )


def resolve_revision(root: Path, rev: str) -> str:
    """The commit id `rev` names; a clear error if git does not know it."""
    if rev.startswith("-"):  # would be read as an option by git and dvc
        raise ReportError(f"{rev!r} is not a git revision: pass a branch, tag or commit id")
    result = run_command(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], root)
    if result.returncode != 0:
        raise ReportError(
            f"unknown git revision {rev!r} in {root}: check the name, or fetch it "
            "(`git fetch origin <branch>`; in GitHub Actions check out with fetch-depth: 0)"
        )
    return result.stdout.strip()


def run_dvc(root: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `dvc <args>` in `root` with this interpreter's DVC; a failure carries DVC's stderr."""
    result = run_command([sys.executable, "-m", "dvc", *args], root)
    if result.returncode != 0:
        raise ReportError(
            f"`dvc {' '.join(args)}` failed (exit {result.returncode}) in {root}:\n"
            f"{result.stderr.strip()}\n"
            "Fix the problem above; run the command yourself with -v for details"
        )
    return result


def run_dvc_json(root: Path, args: list[str]) -> tuple[Any, str]:
    """Run a `dvc ... --json` command; return its parsed output and its stderr."""
    result = run_dvc(root, args)
    try:
        return json.loads(result.stdout or "{}"), result.stderr
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"`dvc {' '.join(args)}` printed no JSON: {result.stdout[:500]!r}"
        ) from exc


def _changes(by_file: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[Change]]:
    """DVC's {file: {key: {old, new, diff}}} as Change lists."""
    return {
        path: [
            Change(key, entry.get("old"), entry.get("new"), entry.get("diff"))
            for key, entry in keys.items()
        ]
        for path, keys in sorted(by_file.items())
    }


def failed_revisions(stderr: str) -> set[str]:
    """Revisions DVC says it could not read (it still exits 0 and leaves them out of the diff)."""
    revs = set(_FAILED_ONE.findall(stderr))
    for listed in _FAILED_SOME.findall(stderr):
        revs.update(rev.strip() for rev in listed.split(","))
    return revs


def check_loaded(root: Path, stderr: str, what: str, base: str) -> list[str]:
    """Unreadable working-tree params/metrics are an error; unreadable base ones a warning."""
    revs = failed_revisions(stderr)
    if "workspace" in revs:
        raise ReportError(
            f"DVC could not read the working tree's {what} in {root}:\n{stderr.strip()}\n"
            f"Fix or regenerate (`dvc repro`) the file; `dvc {what} show -v` names it"
        )
    if not revs:
        return []
    return [
        f"DVC could not read some {what} at `{base}` (a file missing or unreadable there); "
        f"they show as {ABSENT} in the base column. `dvc {what} diff {base} -v` says why."
    ]


def image_plots(root: Path) -> list[str]:
    """The top-level `plots:` entries of dvc.yaml that are plain paths to PNG images."""
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file():
        return []
    try:
        spec = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ReportError(f"{dvc_yaml}: not valid YAML ({exc}); fix the file") from exc
    entries = (spec.get("plots") or []) if isinstance(spec, dict) else []
    return [e for e in entries if isinstance(e, str) and e.lower().endswith(".png")]


def save_plots_diff(root: Path, base: str, out_dir: Path) -> tuple[Path, list[str]]:
    """Write DVC's HTML comparison of every plot to `out_dir`; return it and any warnings."""
    out_dir = out_dir.resolve()
    result = run_dvc(root, ["plots", "diff", base, "--out", str(out_dir)])
    revs = failed_revisions(result.stderr)
    # missing plot data is worth a note, not a failed report: the plots are the optional extra
    warnings = (
        [f"DVC could not read some plots at {', '.join(sorted(revs))}; see `dvc plots diff -v`."]
        if revs
        else []
    )
    return out_dir / "index.html", warnings


def compare(start: Path, base: str, plots_dir: Path | None = None) -> Comparison:
    """Gather params, metrics and plots of the working tree at `start` against revision `base`."""
    root = find_project_root(start)
    commit = resolve_revision(root, base)
    params, params_err = run_dvc_json(root, ["params", "diff", base, "--json"])
    metrics, metrics_err = run_dvc_json(root, ["metrics", "diff", base, "--json", "--all"])
    warnings = check_loaded(root, params_err, "params", base)
    warnings += check_loaded(root, metrics_err, "metrics", base)
    html = None
    if plots_dir is not None:
        html, plot_warnings = save_plots_diff(root, base, plots_dir)
        warnings += plot_warnings
    log.info("compared %s with %s (%s)", root, base, commit[:12])
    return Comparison(
        base=base,
        base_commit=commit,
        params=_changes(params),
        metrics=_changes(metrics),
        images=image_plots(root),
        warnings=warnings,
        plots_html=html,
    )


def is_headline(key: str) -> bool:
    """A key named like a headline figure at the top level, directly under val/test, under
    operating.val/test or train_val_gap."""
    *parents, name = key.split(".")
    has_word = any(word in name for word in HEADLINE_WORDS) and "train" not in name
    return has_word and tuple(parents) in HEADLINE_PARENTS


def _headline_order(key: str) -> tuple[int, int, str]:
    *parents, name = key.split(".")
    where = HEADLINE_PARENTS.index(tuple(parents))
    word = next(i for i, w in enumerate(HEADLINE_WORDS) if w in name)
    return where, word, key


def format_number(value: float) -> str:
    """Metric values: at most 4 decimals, trailing zeros dropped; tiny values in 4 digits."""
    if isinstance(value, int):
        return str(value)
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.4g}"
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def format_delta(change: Change) -> str:
    """A signed difference (`+0.2500`, `-3`), `added`/`removed`, or a dash for non-numbers."""
    diff = change.diff
    if change.old is None or change.new is None:
        return "added" if change.old is None else "removed"
    if isinstance(diff, bool) or not isinstance(diff, int | float):
        return ABSENT
    if diff == 0:
        return "0"
    if isinstance(diff, int):
        return f"{diff:+d}"
    return f"{diff:+.4f}" if abs(diff) >= 1e-4 else f"{diff:+.2e}"


def format_cell(value: Any, is_metric: bool = False) -> str:
    """A markdown table cell: absent as a dash, pipes escaped, long values cut."""
    if value is None:
        return ABSENT
    if isinstance(value, bool):
        text = str(value).lower()
    elif is_metric and isinstance(value, int | float):
        text = format_number(value)
    else:
        text = str(value)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _metric_rows(changes: list[Change]) -> str:
    return "\n".join(
        f"| `{c.key}` | {format_cell(c.old, True)} | {format_cell(c.new, True)} "
        f"| {format_delta(c)} |"
        for c in changes
    )


def render_params(params: dict[str, list[Change]]) -> str:
    """One table per params file: param, base value, new value."""
    tables = [
        f"**{path}**\n\n| Param | Base | New |\n|---|---|---|\n"
        + "\n".join(
            f"| `{c.key}` | {format_cell(c.old)} | {format_cell(c.new)} |"
            for c in sorted(changes, key=lambda c: c.key)
        )
        for path, changes in params.items()
        if changes
    ]
    return "### Params\n\n" + ("\n\n".join(tables) if tables else "No params changed.")


def render_metrics_file(path: str, changes: list[Change]) -> str:
    """Headline keys in a table (changed or not), then the other keys that changed in a
    collapsed <details> table; a file where nothing changed is one line."""
    changed = sum(c.is_changed for c in changes)
    if not changed:
        return f"**{path}**: no change ({len(changes)} metrics)"
    headline = sorted(
        (c for c in changes if is_headline(c.key)), key=lambda c: _headline_order(c.key)
    )
    rest = sorted((c for c in changes if not is_headline(c.key)), key=lambda c: c.key)
    parts = [f"**{path}**: {changed} of {len(changes)} changed"]
    if headline:
        parts.append(f"{METRICS_HEADER}\n{_metric_rows(headline)}")
    moved = [c for c in rest if c.is_changed]
    if moved:
        label = "Other metrics" if headline else "Metrics"
        # GitHub renders markdown inside <details> only after a blank line
        parts.append(
            f"<details><summary>{label} in {path} that changed ({len(moved)}; "
            f"{len(rest) - len(moved)} unchanged not shown)</summary>\n\n"
            f"{METRICS_HEADER}\n{_metric_rows(moved)}\n\n</details>"
        )
    return "\n\n".join(parts)


def render_metrics(metrics: dict[str, list[Change]]) -> str:
    """Every metrics file's table; a note when nothing changed or nothing was found."""
    files = [render_metrics_file(path, changes) for path, changes in metrics.items() if changes]
    if not files:
        return "### Metrics\n\nNo metrics found (none declared in dvc.yaml, or none written yet)."
    changed = any(c.is_changed for changes in metrics.values() for c in changes)
    note = "" if changed else "No metrics changed.\n\n"
    return "### Metrics\n\n" + note + "\n\n".join(files)


def render_plots(comparison: Comparison) -> str:
    """The image plots embedded, and where the interactive comparison lives."""
    lines = ["### Plots", ""]
    for image in comparison.images:
        lines += [f"![{Path(image).stem}]({image})", ""]
    if not comparison.images:
        lines += ["No image plots in dvc.yaml.", ""]
    lines.append(
        f"Compare every plot interactively: `dvc plots diff {comparison.base}` "
        "(add `--out DIR` for an HTML page)."
    )
    if comparison.plots_html is not None:
        lines.append(f"The HTML comparison was written to `{comparison.plots_html}`.")
    return "\n".join(lines)


def render_markdown(comparison: Comparison) -> str:
    """The full pull-request comment."""
    header = (
        "## ApexLoop pipeline report\n\n"
        f"Working tree compared with `{comparison.base}` (`{comparison.base_commit[:12]}`)."
    )
    warnings = "\n".join(f"> **Warning:** {w}" for w in comparison.warnings)
    sections = [
        header,
        warnings,
        render_params(comparison.params),
        render_metrics(comparison.metrics),
        render_plots(comparison),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def build_report(start: Path, base: str, plots_dir: Path | None = None) -> str:
    """Markdown comparing the working tree at `start` with git revision `base`."""
    return render_markdown(compare(start, base, plots_dir))


def write_report(path: Path, markdown: str) -> None:
    """Write the report atomically, so a CI step never posts half a file."""
    write_text_atomic(path, markdown)
