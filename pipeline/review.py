"""What a person sees and decides after cleaning: a self-contained review page and a review queue.

The page (one HTML file, thumbnails inlined) groups flagged and removed images by issue type
and class, shows duplicate groups side by side, with scores and suggested labels. The queue
is a CSV of the same images with an empty `decision` column; a person fills it in (keep, drop,
or relabel:<class>) and points `clean.overrides` at it: on the next run each decision wins
over the automatic action.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.checks import Blob
from pipeline.errors import ApexLoopError
from pipeline.manifest import CHECKS, GROUP_COLUMNS, SCORED_CHECKS, TaskInfo
from pipeline.paths import write_text_atomic

QUEUE_COLUMNS = ["path", "label", "issues", "action", "suggested_label", "decision"]
_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}h2{border-bottom:1px solid #ccc}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ccc;padding:6px;width:170px;
font-size:11px;word-break:break-all}.card img{max-width:160px;max-height:160px;display:block}
.group{display:flex;gap:6px;border:2px dashed #999;padding:6px;margin:6px 0}
.remove{background:#fde2e2}.flag{background:#fff6d5}.relabel{background:#e2f0fd}
"""


class OverrideError(ApexLoopError):
    """The review queue file has rows that cannot be applied."""


def _found(issue: dict[str, Any]) -> list[str]:
    return [check for check in CHECKS if issue[f"is_{check}_issue"]]


def _thumbnails(previews: dict[str, Blob | None]) -> dict[str, str]:
    """path -> data: URI of the image's preview JPEG, or '' when it has none (unreadable).
    Previews in row order lie chunk file after chunk file: each file is read once, and only
    the one at hand is held."""
    found = {}
    file, data = None, b""
    for path, preview in previews.items():
        if preview is None:
            found[path] = ""
            continue
        if preview.file != file:
            file, data = preview.file, preview.file.read_bytes()
        found[path] = "data:image/jpeg;base64," + base64.b64encode(preview.read(data)).decode()
    return found


def _card(issue: dict[str, Any], thumbs: dict[str, str]) -> str:
    scores = ", ".join(
        f"{check} {issue[f'{check}_score']:.2f}"
        for check in SCORED_CHECKS
        if issue[f"{check}_score"] is not None
    )
    label = issue["label"] if issue["label"] is not None else ";".join(issue["labels"]) or "good"
    lines = [
        f"<b>{html.escape(issue['path'])}</b>",
        f"label: {html.escape(label)}",
        f"action: {html.escape(issue['action'])}"
        + (f" ({html.escape(issue['reason'])})" if issue["reason"] else ""),
    ]
    if issue["suggested_label"] is not None:
        confident = " (confident)" if issue["is_suggestion_confident"] else ""
        lines.append(f"suggested: {html.escape(issue['suggested_label'])}{confident}")
    if scores:
        lines.append(f"scores: {html.escape(scores)}")
    image = thumbs.get(issue["path"], "")
    img = f'<img src="{image}" alt="{html.escape(issue["path"])}">' if image else "[no image]"
    return f'<div class="card {html.escape(issue["action"])}">{img}{"<br>".join(lines)}</div>'


def _section(
    check: str, members: list[dict[str, Any]], thumbs: dict[str, str], info: TaskInfo
) -> str:
    """One issue type: duplicate groups side by side, other checks grouped by class."""
    parts = [f'<h2 id="{check}">{check} ({len(members)})</h2>']
    if check in GROUP_COLUMNS:
        column = GROUP_COLUMNS[check]
        groups: dict[int, list[str]] = {}
        for issue in members:
            groups.setdefault(issue[column], []).append(_card(issue, thumbs))
        for group in sorted(groups):
            parts.append(f'<div class="group">{"".join(groups[group])}</div>')
        return "\n".join(parts)
    for name in info.classes:
        in_class = [issue for issue in members if name in info.row_classes(issue)]
        if in_class:
            cards = "".join(_card(issue, thumbs) for issue in in_class)
            parts.append(
                f'<h3>{html.escape(name)} ({len(in_class)})</h3><div class="cards">{cards}</div>'
            )
    return "\n".join(parts)


def write_review_page(
    path: Path,
    issues: Sequence[dict[str, Any]],
    previews: Sequence[Blob | None],
    info: TaskInfo,
) -> None:
    """The self-contained HTML review page of every image with a found issue (`previews`: each
    issue's preview JPEG, None where the image is unreadable)."""
    flagged = [issue for issue in issues if _found(issue)]
    shown = {issue["path"] for issue in flagged}
    # duplicates are shown with the kept member of their group, for comparison
    for column in GROUP_COLUMNS.values():
        groups = {issue[column] for issue in flagged if issue[column] is not None}
        shown |= {issue["path"] for issue in issues if issue[column] in groups}
    thumbs = _thumbnails(
        {
            issue["path"]: preview
            for issue, preview in zip(issues, previews, strict=True)
            if issue["path"] in shown
        }
    )
    sections = []
    for check in CHECKS:
        members = [issue for issue in issues if issue[f"is_{check}_issue"]]
        if check in GROUP_COLUMNS:
            column = GROUP_COLUMNS[check]
            groups = {issue[column] for issue in members}
            members = [
                issue for issue in issues if issue[column] in groups and issue[column] is not None
            ]
        if members:
            sections.append(_section(check, members, thumbs, info))
    index = " | ".join(
        f'<a href="#{c}">{c}</a>' for c in CHECKS if any(i[f"is_{c}_issue"] for i in issues)
    )
    body = "\n".join(sections) or "<p>No issues found.</p>"
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ApexLoop clean review</title>"
        f"<style>{_STYLE}</style></head><body><h1>Clean review: {len(flagged)} of {len(issues)} "
        f"images with issues</h1><p>{index}</p>{body}</body></html>\n"
    )
    write_text_atomic(path, page)


def write_review_queue(path: Path, issues: Sequence[dict[str, Any]]) -> None:
    """The editable CSV of every image with a found issue; `decision` left for a person."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=QUEUE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for issue in issues:
        if _found(issue):
            label = issue["label"] if issue["label"] is not None else ";".join(issue["labels"])
            writer.writerow(
                {
                    "path": issue["path"],
                    "label": label,
                    "issues": ";".join(_found(issue)),
                    "action": issue["action"],
                    "suggested_label": issue["suggested_label"] or "",
                    "decision": "",
                }
            )
    write_text_atomic(path, buffer.getvalue())


def read_overrides(
    path: Path, paths: set[str], info: TaskInfo
) -> dict[str, tuple[str, str | None]]:
    """Decisions by image path: ('keep'|'drop', None) or ('relabel', '<class>' or 'a;b').

    Blank decisions are skipped; unknown paths, decisions or classes are one error listing
    every bad row.
    """
    if not path.is_file():
        raise OverrideError(f"{path}: overrides file not found (clean.overrides)")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "decision"} <= set(reader.fieldnames):
            raise OverrideError(f"{path}: needs the columns path and decision")
        rows = list(reader)
    decisions: dict[str, tuple[str, str | None]] = {}
    problems = []
    for number, row in enumerate(rows, start=2):
        decision = (row["decision"] or "").strip()
        if not decision:
            continue
        where = f"{path.name} row {number} ({row['path']!r})"
        kind, _, target = decision.partition(":")
        wanted = [t for t in target.split(";") if t] if kind == "relabel" else []
        if row["path"] not in paths:
            problems.append(f"{where}: no such image in the manifest")
        elif kind not in ("keep", "drop", "relabel") or (kind == "relabel") != bool(
            target or wanted
        ):
            problems.append(f"{where}: decision {decision!r} is not keep, drop or relabel:<class>")
        elif unknown := [t for t in wanted if t not in info.classes]:
            problems.append(
                f"{where}: unknown class(es) {unknown}; classes are {list(info.classes)}"
            )
        else:
            decisions[row["path"]] = (kind, target if kind == "relabel" else None)
    if problems:
        raise OverrideError(f"{path}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems))
    return decisions
