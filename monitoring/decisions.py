"""The record of every monitoring decision: one JSON line each, in ``<data_dir>/monitoring/decisions.jsonl``.

The cooldown counts from the last decision whose retraining trigger was actually sent, so a decision
that could not reach Prefect (or ran with ``trigger=False``) does not hold the next one back.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from core.settings import Settings


def decisions_path(settings: Settings) -> Path:
    return settings.data_dir / "monitoring" / "decisions.jsonl"


def record_decision(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str, sort_keys=True) + "\n")


def read_decisions(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def last_trigger_at(path: Path) -> datetime | None:
    """When the last retraining trigger was sent, or None."""
    times = [datetime.fromisoformat(r["decided_at"]) for r in read_decisions(path) if r.get("triggered")]
    return max(times) if times else None
