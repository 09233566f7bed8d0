"""Where a monitoring run leaves its traces: an HTML report, an Evidently workspace, an MLflow run.

* ``<state>/reports/<timestamp>/drift.html`` (and ``summary.json``): the Evidently report of one run;
  ``performance.html`` beside it when feedback labels have arrived.
* ``<state>/evidently``: a local Evidently workspace with one project; ``evidently ui --workspace
  <state>/evidently`` shows its dashboard (drift share and per-column drift over time).
* MLflow experiment ``<experiment_name>-monitoring``: one run per monitoring run, with ``drift_share``,
  ``drift_score_<column>``, data-quality counts and ``perf_<metric>`` as metrics (so each is a chart over
  time in the MLflow UI), the HTML report as an artifact, and the decision as tags.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.settings import Settings
from monitoring.drift import DriftResult, metrics_for_logging, summary

if TYPE_CHECKING:
    from evidently.ui.workspace import Project, Workspace

# MLflow refuses tag values beyond 5,000 characters (8,000 on newer servers); reasons rarely come close.
_MAX_TAG = 5_000


def monitoring_experiment(settings: Settings) -> str:
    return f"{settings.experiment_name}-monitoring"


def report_dir(settings: Settings, at: datetime) -> Path:
    return settings.state / "reports" / at.strftime("%Y%m%dT%H%M%S%fZ")


def workspace_dir(settings: Settings) -> Path:
    return settings.state / "evidently"


def save_report(result: DriftResult, folder: Path) -> Path:
    """The Evidently HTML report and a JSON summary of the result; returns the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / "drift.html"
    result.snapshot.save_html(str(html))
    if result.performance_snapshot is not None:
        result.performance_snapshot.save_html(str(folder / "performance.html"))
    (folder / "summary.json").write_text(json.dumps(summary(result), indent=2, default=str))
    return html


def add_to_workspace(result: DriftResult, settings: Settings, *, name: str) -> str:
    """Add the run's snapshot to the local Evidently workspace; returns the snapshot id."""
    from evidently.ui.workspace import Workspace  # slow import (monitoring/drift.py)

    workspace = Workspace(str(workspace_dir(settings)))
    project = _project(workspace, settings, columns=[*result.columns, *result.prediction])
    ref = workspace.add_run(project.id, result.snapshot, include_data=False, name=name)
    if result.performance_snapshot is not None:
        workspace.add_run(project.id, result.performance_snapshot, include_data=False, name=f"{name} performance")
    return str(ref.id)


def _project(workspace: Workspace, settings: Settings, columns: list[str]) -> Project:
    """The project named after the model, created with its dashboard on first use."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import counter_panel, line_plot_panel

    name = f"{settings.model_name} monitoring"
    found = workspace.search_project(name)
    if found:
        return found[0]
    project = workspace.create_project(name, description=f"Prediction-log drift for model '{settings.model_name}'")
    share = PanelMetric(
        legend="share", metric="evidently:metric_v2:DriftedColumnsCount", metric_labels={"value_type": "share"}
    )
    project.dashboard.add_panel(counter_panel(title="Share of drifted columns (last run)", values=[share]))
    project.dashboard.add_panel(line_plot_panel(title="Share of drifted columns", values=[share]))
    project.dashboard.add_panel(
        line_plot_panel(
            title="Drift score per column",
            values=[
                PanelMetric(legend=c, metric="evidently:metric_v2:ValueDrift", metric_labels={"column": c})
                for c in columns
            ],
        )
    )
    # Filled by the performance snapshots (labelled rows only); a regression project leaves it empty.
    project.dashboard.add_panel(
        line_plot_panel(
            title="Performance on labelled rows",
            values=[
                PanelMetric(legend=legend, metric=f"evidently:metric_v2:{metric}")
                for legend, metric in (("ROC AUC", "RocAuc"), ("F1", "F1Score"), ("Accuracy", "Accuracy"))
            ],
        )
    )
    return project


def log_to_mlflow(
    settings: Settings,
    *,
    run_name: str,
    tags: dict[str, str],
    result: DriftResult | None = None,
    html: Path | None = None,
    extra_metrics: dict[str, float] | None = None,
) -> str:
    """One run in the monitoring experiment; returns its run id.

    Also called without a result (too little data, no reference, a failed report), so that a run that
    decided nothing is as visible in MLflow as one that did.
    """
    import mlflow  # heavy, and only this step needs it

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    # By id, not mlflow.set_experiment: that sets a process-wide active experiment, and a training run
    # resumed later in the same process (the refit before the holdout) would then be refused.
    name = monitoring_experiment(settings)
    found = mlflow.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found is not None else mlflow.create_experiment(name)
    metrics = dict(extra_metrics or {})
    if result is not None:
        metrics.update(metrics_for_logging(result))
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({k: v[:_MAX_TAG] for k, v in tags.items()})
        if metrics:
            mlflow.log_metrics(metrics)
        if result is not None:
            mlflow.log_dict(summary(result), "summary.json")
        if html is not None:
            mlflow.log_artifact(str(html))
            if (html.parent / "performance.html").exists():
                mlflow.log_artifact(str(html.parent / "performance.html"))
        return str(run.info.run_id)


def decision_tags(record: dict[str, Any]) -> dict[str, str]:
    """The decision record as MLflow tags (strings)."""
    keys = ("status", "retrain", "reasons", "fired", "triggered", "trigger_error", "flow_run_id", "message")
    return {f"monitor.{k}": _tag(record[k]) for k in keys if record.get(k) is not None}


def _tag(value: Any) -> str:
    if isinstance(value, list):
        return " | ".join(str(v) for v in value)
    return str(value)
