"""Swaps the workers of one service make together: a nudge board and a common switch time.

Each uvicorn worker is its own process with its own model. Left alone, each swaps when its own poll of
the registry notices the alias moved, up to `reload_interval_s` apart, and clients see the answering
version flip back and forth between workers. The workers of one service share a folder
(`<state>/serving/swaps`, or `serving.swap_dir`) and coordinate through it:

- **Nudge.** Whoever learns first that the alias may have moved (the MLflow webhook, `/admin/reload`, or
  a worker's own poll) touches `nudge`. Every worker checks its modification time every
  `serving.nudge_check_s` and then asks the registry at once, instead of at its next poll.
- **Ready, then switch together.** A worker that has loaded (downloaded, compiled, warmed) a new version
  writes `ready-<version>-<pid>` and waits until every live worker has done so (at most
  `serving.swap_wait_s`). All of them then switch at the same moment: the newest ready mark's time plus
  `SWITCH_MARGIN_S`, which each computes from the same files. Clients see one change per alias move.

The board is a plain folder on the workers' host: within one host (a VM, a container, a Kubernetes pod)
every worker gets the nudge; other hosts learn from the webhook sent to them or from their own poll.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.servers import process_alive

log = logging.getLogger(__name__)

# Time between the last worker being ready and the switch: long enough for every worker to read the
# marks (they look every `nudge_check_s`, 0.05 s by default), short enough not to matter to anyone.
SWITCH_MARGIN_S = 0.25


@dataclass
class SwapBoard:
    folder: Path
    workers: int
    wait_s: float
    check_s: float

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._nudge = self.folder / "nudge"
        self._seen = self._nudge_mtime()

    # ---- nudges -----------------------------------------------------------------------------------
    def nudge(self, reason: str) -> None:
        """Tell every worker to check the registry now."""
        # A name of its own per call: /admin/reload and the watcher's thread may nudge at the same moment.
        tmp = self.folder / f".nudge-{os.getpid()}-{uuid.uuid4().hex}"
        tmp.write_text(json.dumps({"at": time.time(), "pid": os.getpid(), "reason": reason}))
        tmp.replace(self._nudge)  # a new inode and mtime: every watcher sees the change

    def nudged(self) -> bool:
        """True once per nudge since the last call (in this process)."""
        mtime = self._nudge_mtime()
        if mtime != self._seen:
            self._seen = mtime
            return True
        return False

    def _nudge_mtime(self) -> int:
        try:
            return self._nudge.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    # ---- switching together -----------------------------------------------------------------------
    def switch_time(self, version: str) -> float:
        """Mark this worker ready with `version`; wait for the others; the wall-clock time to switch at.

        Blocking (call it from a thread). Alone (one worker) it returns now. If some worker is not ready
        within `wait_s` (still loading, dead, or on another version), this one switches anyway."""
        if self.workers <= 1:
            return time.time()
        mark = self.folder / f"ready-{version}-{os.getpid()}"
        mark.write_text(str(time.time()))
        deadline = time.monotonic() + self.wait_s
        while True:
            marks = self._ready(version)
            if len(marks) >= self.workers:
                return max(marks.values()) + SWITCH_MARGIN_S
            if time.monotonic() >= deadline:
                log.warning(
                    "swap to v%s: %d of %d workers ready after %.1fs; switching without the others",
                    version,
                    len(marks),
                    self.workers,
                    self.wait_s,
                )
                return time.time()
            time.sleep(self.check_s)

    def forget(self, keep_version: str) -> None:
        """Remove this worker's ready marks for other versions, and marks of workers that are gone."""
        for path in self.folder.glob("ready-*"):
            version, pid = _parse(path.name)
            if pid is None:
                continue
            if (pid == os.getpid() and version != keep_version) or not process_alive(pid):
                path.unlink(missing_ok=True)

    def _ready(self, version: str) -> dict[int, float]:
        out: dict[int, float] = {}
        for path in self.folder.glob(f"ready-{version}-*"):
            v, pid = _parse(path.name)
            if v != version or pid is None or not process_alive(pid):
                continue
            try:
                out[pid] = float(path.read_text() or 0)
            except (OSError, ValueError):
                continue  # being written: read again on the next look
        return out


def _parse(name: str) -> tuple[str, int | None]:
    """`ready-<version>-<pid>` -> (version, pid); versions are registry version numbers."""
    body = name.removeprefix("ready-")
    version, _, pid = body.rpartition("-")
    return version, int(pid) if pid.isdigit() else None


def sleep_until(wall_time: float) -> None:
    delay = wall_time - time.time()
    if delay > 0:
        time.sleep(delay)
