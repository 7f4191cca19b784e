"""Path confinement and atomic file output.

Every input path is resolved inside its data root (no `..`, no symlink escaping it), and every
output is written to a temporary sibling first and renamed into place, so a killed stage never
leaves a half-written file where the next stage would read it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import ApexLoopError


class PathError(ApexLoopError):
    """A path points outside its data root or is otherwise unusable."""


def resolve_inside(root: Path, relative: str) -> Path:
    """Resolve `relative` under `root`; raise PathError if it escapes the root."""
    if not relative or Path(relative).is_absolute():
        raise PathError(f"{relative!r}: expected a path relative to {root}")
    base = root.resolve()
    try:
        target = (base / relative).resolve()
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError on a link loop
        raise PathError(
            f"{relative!r} cannot be resolved under {root}: {exc}; remove or fix the link"
        ) from None
    if not target.is_relative_to(base):
        raise PathError(f"{relative!r} resolves outside the data root {root}")
    return target


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the target folder; on success fsync it and rename onto `path`.

    On any exception the temporary file is removed and `path` is left untouched. Temporaries
    of `path` that a killed process left behind are removed first (runs of one project do not
    overlap: DVC and the Prefect flow each run a stage once at a time).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):  # left by a killed writer
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs are ordinary files
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
