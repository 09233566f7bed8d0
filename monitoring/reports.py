"""Where a monitoring run leaves its traces: an HTML report, an Evidently workspace, an MLflow run.

* ``<state>/reports/<timestamp>/drift.html`` (and ``summary.json``): the Evidently report of one run;
  ``performance.html`` beside it when feedback labels have arrived.
* ``<state>/evidently``: a local Evidently workspace with one project; ``evidently ui --workspace
  <state>/evidently`` shows its dashboard (the last run's headline, drift share and per-column drift over
  time, performance on labelled rows).
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
    from evidently.sdk.models import DashboardModel

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
    """Add the run's snapshots to the local Evidently workspace and rewrite its dashboard; returns the
    drift snapshot's id."""
    from evidently.ui.workspace import Workspace  # slow import (monitoring/drift.py)

    workspace = Workspace(str(workspace_dir(settings)))
    project_name = f"{settings.model_name} monitoring"
    found = workspace.search_project(project_name)
    project = (
        found[0]
        if found
        else workspace.create_project(
            project_name, description=f"Prediction-log drift for model '{settings.model_name}'"
        )
    )
    ref = workspace.add_run(project.id, result.snapshot, include_data=False, name=name)
    if result.performance_snapshot is not None:
        workspace.add_run(project.id, result.performance_snapshot, include_data=False, name=f"{name} performance")
    # Rewritten on every run: the headline panel carries this run's figures, and a workspace made by an
    # older version of this module gets the current panels.
    workspace.save_dashboard(project.id, dashboard(result, settings.contract.task, name=name))
    return str(ref.id)


# Evidently's metric per performance panel line, by task: what ClassificationPreset / RegressionPreset
# compute (binary ROC AUC only when the log holds probabilities). MAE is stored as a mean and a spread.
_PERFORMANCE: dict[str, list[tuple[str, str, dict[str, str]]]] = {
    "binary": [("ROC AUC", "RocAuc", {}), ("F1", "F1Score", {}), ("Accuracy", "Accuracy", {})],
    "multiclass": [("Accuracy", "Accuracy", {}), ("F1 (macro)", "F1Score", {})],
    "regression": [("RMSE", "RMSE", {}), ("MAE", "MAE", {"value_type": "mean"})],
}


def dashboard(result: DriftResult, task: str, *, name: str) -> DashboardModel:
    """The project's dashboard: this run's headline, drift over time, drift per column, performance.

    The headline is a text panel, not a counter: Evidently 0.7.23's counter shows a value of 0 as
    "no value" (its UI tests the number for truth), and "no column drifted" is the usual, good news."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import line_plot_panel, text_panel

    drifted, checked = len(result.drifted_columns), len(result.columns)
    headline = f"Last run: {drifted} of {checked} columns drifted ({result.drift_share:.0%})"
    details = [name, f"{result.window_rows:,} served rows against {result.reference_rows:,} training rows"]
    if result.drifted_columns:
        details.append("drifted: " + ", ".join(result.drifted_columns))
    if result.prediction_drift:
        details.append("the predictions drifted")
    if result.performance is not None:
        details.append(f"{result.performance.labelled_rows:,} rows labelled")
    # Evidently's own count: feature and prediction columns together, so it can differ from the headline's
    # share of feature columns (the share the retraining policy weighs).
    share = PanelMetric(
        legend="features and predictions",
        metric="evidently:metric_v2:DriftedColumnsCount",
        metric_labels={"value_type": "share"},
    )
    columns = [*result.columns, *result.prediction]
    panels = [
        text_panel(title=headline, description=" · ".join(details)),
        line_plot_panel(title="Share of drifted columns, predictions included", values=[share]),
        line_plot_panel(
            title="Drift score per column",
            values=[
                PanelMetric(legend=c, metric="evidently:metric_v2:ValueDrift", metric_labels={"column": c})
                for c in columns
            ],
        ),
        # Filled by the performance snapshots: the rows whose label came back.
        line_plot_panel(
            title="Performance on labelled rows",
            values=[
                PanelMetric(legend=legend, metric=f"evidently:metric_v2:{metric}", metric_labels=labels)
                for legend, metric, labels in _PERFORMANCE[task]
            ],
        ),
    ]
    tab = DashboardTabModel(title="Monitoring", panels=[p.id for p in panels])
    return DashboardModel(tabs=[tab], panels=panels)


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
