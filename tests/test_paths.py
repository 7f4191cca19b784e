"""Atomic output: a file appears whole or not at all, and a killed writer's litter goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.paths import atomic_output, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_the_file_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(target) as tmp:
        tmp.write_text("whole")
        assert not target.exists()
    assert target.read_text() == "whole"


def test_temporaries_a_killed_writer_left_are_removed_and_nothing_else(tmp_path: Path) -> None:
    stale = [tmp_path / ".out.txt.k2j4_x.tmp", tmp_path / ".out.txt.0.tmp"]
    others = [tmp_path / ".other.txt.k2j4_x.tmp", tmp_path / "out.txt.tmp", tmp_path / ".out.txt"]
    for path in [*stale, *others]:
        path.write_text("litter")
    write_text_atomic(tmp_path / "out.txt", "new")
    assert (tmp_path / "out.txt").read_text() == "new"
    assert [p for p in stale if p.exists()] == []
    assert [p for p in others if not p.exists()] == []
