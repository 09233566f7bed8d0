"""The swap board's nudges: seen once per nudge by each watcher, safe when threads nudge at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serving.swaps import SwapBoard


def board(folder: Path) -> SwapBoard:
    return SwapBoard(folder, workers=2, wait_s=1.0, check_s=0.01)


def test_each_watcher_sees_a_nudge_once(tmp_path: Path) -> None:
    a, b = board(tmp_path), board(tmp_path)
    assert not a.nudged() and not b.nudged()
    a.nudge("the alias moved")
    assert b.nudged() and not b.nudged()
    assert a.nudged()  # the nudger's own watcher checks too


def test_threads_nudging_at_the_same_moment_never_fail(tmp_path: Path) -> None:
    """/admin/reload and the watcher's thread nudged at once in a 2-worker service under load: the second
    rename found its temporary file gone (FileNotFoundError, a 500 from /admin/reload)."""
    shared = board(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: shared.nudge(f"nudge {i}"), range(400)))
    assert (tmp_path / "nudge").exists()
    assert not list(tmp_path.glob(".nudge-*")), "no temporary file left behind"
