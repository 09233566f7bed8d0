"""Every benchmark's last step: its figures to benchmarks/results/<name>.json, and to the terminal."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(result: dict[str, Any], path: Path, shown: Iterable[str] | None = None) -> None:
    """Write `result` as JSON to `path` and print it (only the `shown` keys, when given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    keys = list(shown) if shown is not None else list(result)
    print(json.dumps({k: result[k] for k in keys if k in result}, indent=2, default=str))
    print(f"written to {path}")
