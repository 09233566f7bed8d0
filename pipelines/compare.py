"""Flow `compare`: the champion and the challenger on live traffic, from a window of the prediction log.

    read the window (every role) + labels -> core.modeling.online.compare -> online.json/online.html in
      <state>/reports/<timestamp>/, one MLflow run in <experiment>-monitoring -> event mlops.rollout.compared

It also forwards the canary rollbacks the service decided (``<state>/serving/rollout-decisions.jsonl``;
serving does not import Prefect) as ``mlops.rollout.rolled-back`` events, each once: a cursor (the byte
offset reached) is kept in ``<state>/monitoring/rollout-events.json``.

Run: ``mlops run compare [-p window_rows=20000] [-p window_hours=24]``, ``python -m pipelines.compare``, or
the ``compare/compare`` deployment.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow

from core.modeling import online
from core.modeling.online import OnlineComparison
from core.settings import Settings, get_settings
from monitoring.online import log_comparison, save_comparison
from monitoring.reports import report_dir
from pipelines import events
from pipelines.entry import run_main


@dataclass
class CompareOutcome:
    comparison: OnlineComparison
    record: dict[str, Any] = field(default_factory=dict)


def run_compare(
    window_rows: int | None = None,
    window_hours: float | None = None,
    tolerance: float = 0.05,
    *,
    settings: Settings,
    now: datetime | None = None,
) -> CompareOutcome:
    """The flow's body as plain Python. The window defaults to monitoring's (rows of every role)."""
    now = now or datetime.now(UTC)
    if window_rows is None and window_hours is None:
        window_rows, window_hours = settings.monitoring.window_rows, settings.monitoring.window_hours
    since = None if window_hours is None else now - timedelta(hours=window_hours)
    rows, labels = online.read_online(settings.prediction_log_url, since=since, limit=window_rows)
    need = settings.gate.require_online
    comparison = online.compare(
        rows,
        labels,
        settings.contract,
        settings.training.primary_metric,
        tolerance=tolerance,
        n_bootstrap=settings.gate.n_bootstrap,
        confidence=need.confidence if need is not None else settings.gate.confidence,
        seed=settings.seed,
    )
    record: dict[str, Any] = {"compared_at": now.isoformat(), "window_rows": len(rows), **comparison.as_dict()}
    page = save_comparison(comparison, report_dir(settings, now))
    record["report_html"] = str(page)
    try:
        record["mlflow_run_id"] = log_comparison(settings, comparison, run_name=f"compare-{now.isoformat()}", page=page)
    except Exception as exc:  # tracking being away must not lose the comparison (it is on disk)
        record["mlflow_error"] = f"{type(exc).__name__}: {exc}"
    payload = {
        k: record.get(k)
        for k in (
            "champion_version",
            "challenger_version",
            "metric",
            "paired_rows",
            "agreement",
            "labelled_pairs",
            "delta",
            "ci_low",
            "ci_high",
            "report_html",
        )
    }
    record["event_id"] = events.emit(events.ROLLOUT_COMPARED, settings.model_name, payload)
    record["rollbacks_emitted"] = emit_rollbacks(settings)
    _print(comparison, record)
    return CompareOutcome(comparison, record)


def rollout_decisions_file(settings: Settings) -> Path:
    return settings.state / "serving" / "rollout-decisions.jsonl"


def cursor_file(settings: Settings) -> Path:
    return settings.state / "monitoring" / "rollout-events.json"


def emit_rollbacks(settings: Settings) -> int:
    """Emit `mlops.rollout.rolled-back` for each decision line past the cursor; returns how many. The cursor
    moves past a line only once its event was handed to Prefect, and never past a half-written line."""
    source, cursor = rollout_decisions_file(settings), cursor_file(settings)
    if not source.exists():
        return 0
    offset = int(json.loads(cursor.read_text()).get("offset", 0)) if cursor.exists() else 0
    if offset > source.stat().st_size:
        offset = 0  # the file was replaced: start again
    emitted = 0
    with source.open("rb") as fh:
        fh.seek(offset)
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # the service is still writing it
            line = raw.decode("utf-8").strip()
            if line:
                try:
                    decision = json.loads(line)
                except json.JSONDecodeError:
                    decision = {"unreadable": line[:1000]}
                if events.emit(events.ROLLOUT_ROLLED_BACK, settings.model_name, decision) is None:
                    break  # no events client here: try again on the next run
                emitted += 1
            offset += len(raw)
    cursor.parent.mkdir(parents=True, exist_ok=True)
    cursor.write_text(json.dumps({"offset": offset, "file": str(source)}))
    return emitted


def _print(c: OnlineComparison, record: dict[str, Any]) -> None:
    if c.challenger_version is not None:
        agreement = "-" if c.agreement is None else f"{c.agreement:.4f}"
        print(
            f"compare: champion v{c.champion_version} vs challenger v{c.challenger_version}: {c.paired_rows} paired "
            f"requests, agreement {agreement}"
        )
    if c.delta is not None:
        print(
            f"compare: {c.metric} on {c.labelled_pairs} labelled pairs: champion {c.champion_metric:.4f}, "
            f"challenger {c.challenger_metric:.4f}, improvement {c.delta:+.4f} "
            f"({c.confidence:.0%} CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}])"
        )
    for note in c.notes:
        print(f"compare note: {note}")
    if record.get("rollbacks_emitted"):
        print(f"compare: {record['rollbacks_emitted']} canary rollback(s) emitted as {events.ROLLOUT_ROLLED_BACK}")


@flow(name="compare", log_prints=True)
def compare(
    window_rows: int | None = None, window_hours: float | None = None, tolerance: float = 0.05
) -> dict[str, Any]:
    """Prefect flow: compare champion and challenger on the window; returns the record."""
    return run_compare(window_rows, window_hours, tolerance, settings=get_settings()).record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-rows", type=int, default=None)
    parser.add_argument("--window-hours", type=float, default=None)
    parser.add_argument("--tolerance", type=float, default=0.05, help="regression: relative agreement tolerance")
    args = parser.parse_args(argv)
    print(json.dumps(compare(args.window_rows, args.window_hours, args.tolerance), indent=2, default=str))


if __name__ == "__main__":
    run_main(main)
