"""Duplicate grouping."""

from __future__ import annotations

from collections.abc import Sequence


def group_exact_duplicates(keys: Sequence[str | None]) -> list[int | None]:
    """Group ids for rows sharing a key with at least one other row; None elsewhere.

    Ids are numbered 0, 1, ... in order of each group's first row, so the same input always
    gives the same ids. Rows with key None (e.g. unreadable images) are never grouped.
    """
    first_seen: dict[str, int] = {}
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            first_seen.setdefault(key, len(first_seen))
            counts[key] = counts.get(key, 0) + 1
    numbering: dict[str, int] = {}
    for key in sorted((k for k in first_seen if counts[k] > 1), key=first_seen.__getitem__):
        numbering[key] = len(numbering)
    return [numbering.get(key) if key is not None else None for key in keys]
