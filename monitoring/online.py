"""Where an online comparison (core.modeling.online) is written: ``online.json`` and ``online.html`` in the
run's report folder (``<state>/reports/<timestamp>/``, beside the drift report's), and one MLflow run in
``<experiment>-monitoring`` whose metrics are the comparison's numbers (``online_agreement``,
``online_delta``, ``online_shadow_score_distance``, ...), so each is a chart over time."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from core.modeling.online import OnlineComparison
from core.settings import Settings
from monitoring.reports import monitoring_experiment

_MAX_TAG = 5_000


def save_comparison(comparison: OnlineComparison, folder: Path) -> Path:
    """``online.json`` and ``online.html`` in `folder`; returns the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "online.json").write_text(json.dumps(comparison.as_dict(), indent=2, default=str))
    page = folder / "online.html"
    page.write_text(render_html(comparison), encoding="utf-8")
    return page


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def render_html(c: OnlineComparison) -> str:
    """A small self-contained page: per-role figures, the pairs, the metric with its interval, notes."""
    role_rows = "".join(
        f"<tr><td>{_fmt(f.role)}</td><td>{_fmt(f.version)}</td><td>{f.rows}</td><td>{_fmt(f.latency_p50_ms, 2)}</td>"
        f"<td>{_fmt(f.latency_p99_ms, 2)}</td><td>{_fmt(f.score_distance)}</td><td>{f.labelled_rows}</td>"
        f"<td>{_fmt(f.metric)}</td></tr>"
        for f in c.roles.values()
    )
    level = f"{c.confidence:.0%}"
    pairs = [
        ("champion version", c.champion_version),
        ("challenger version", c.challenger_version),
        ("paired (shadowed) requests", c.paired_rows),
        ("agreement" + (f" (within {c.tolerance:.0%})" if c.tolerance is not None else ""), c.agreement),
        ("labelled pairs", c.labelled_pairs),
        (f"champion {c.metric}", c.champion_metric),
        (f"challenger {c.metric}", c.challenger_metric),
        ("improvement (challenger - champion, positive = better)", c.delta),
        (f"{level} interval", f"[{_fmt(c.ci_low)}, {_fmt(c.ci_high)}]" if c.ci_low is not None else None),
    ]
    summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in pairs)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in c.notes)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Online comparison</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>Online comparison: champion vs challenger ({html.escape(c.task)}, {html.escape(c.metric)})</h1>"
        f"<table>{summary}</table><h2>Per role</h2><table><tr><th>role</th><th>version</th><th>rows</th>"
        "<th>latency p50 ms</th><th>latency p99 ms</th><th>score distance (JS)</th><th>labelled</th>"
        f"<th>{html.escape(c.metric)}</th></tr>{role_rows}</table>"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + "</body></html>"
    )


def log_comparison(settings: Settings, comparison: OnlineComparison, *, run_name: str, page: Path | None) -> str:
    """One run in the monitoring experiment; returns its run id."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    name = monitoring_experiment(settings)
    found = mlflow.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found is not None else mlflow.create_experiment(name)
    tags = {
        "kind": "online-comparison",
        "online.champion_version": str(comparison.champion_version),
        "online.challenger_version": str(comparison.challenger_version),
        "online.metric": comparison.metric,
        "online.notes": " | ".join(comparison.notes)[:_MAX_TAG],
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags(tags)
        metrics = {f"online_{k}": v for k, v in comparison.metrics().items()}
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_dict(comparison.as_dict(), "online.json")
        if page is not None:
            mlflow.log_artifact(str(page))
        return str(run.info.run_id)
