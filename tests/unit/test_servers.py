"""Starting several servers at once: every server that came up is handed back, also when another failed."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from core.servers import Server, start_together, stop_in_phases, stop_process_group


def _sleeper(name: str, tmp: Path) -> Server:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    return Server(name, f"http://127.0.0.1/{name}", proc, tmp / f"{name}.log")


def test_a_failed_start_still_hands_back_the_servers_that_came_up(tmp_path: Path) -> None:
    def broken() -> Server:
        raise RuntimeError("port 5000 for mlflow is taken")

    recorded: dict[str, Server] = {}
    with pytest.raises(RuntimeError, match="port 5000 for mlflow is taken"):
        start_together(
            {"mlflow": broken, "prefect": lambda: _sleeper("prefect", tmp_path)},
            recorded.__setitem__,
        )
    try:
        assert list(recorded) == ["prefect"]
        assert recorded["prefect"].proc.poll() is None  # still running: the caller stops it
    finally:
        for server in recorded.values():
            stop_process_group(server.proc.pid, timeout=5)


def test_all_started_are_returned_by_name(tmp_path: Path) -> None:
    servers = start_together({n: partial(_sleeper, n, tmp_path) for n in ("a", "b", "c")})
    try:
        assert sorted(servers) == ["a", "b", "c"]
        assert all(s.name == n for n, s in servers.items())
    finally:
        for server in servers.values():
            stop_process_group(server.proc.pid, timeout=5)


def test_stop_in_phases_stops_every_group_and_an_orphaned_one(tmp_path: Path) -> None:
    """A stack's servers are orphans once the process that started them exits (`make stop` is another
    process): stopping one must not leave it running, whoever reaps it."""
    started_elsewhere = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess as s; print(s.Popen(['sleep', '60'], start_new_session=True, stdout=s.DEVNULL).pid)",
        ],
        stdout=subprocess.PIPE,  # the sleeper's own output goes nowhere: the run does not wait for its end
        stderr=subprocess.DEVNULL,
        text=True,
        check=True,
    )
    orphan = int(started_elsewhere.stdout)
    front = _sleeper("api", tmp_path)
    stopped = stop_in_phases([{"api": front.proc.pid}, {"mlflow": orphan}], say=lambda line: None)
    assert stopped == ["api", "mlflow"]
    assert front.proc.poll() is not None
    status = Path(f"/proc/{orphan}/status")
    assert not status.exists() or "zombie" in status.read_text(), "the orphaned server still runs"
