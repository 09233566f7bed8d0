"""What the monitoring flow reads: the window of served rows, the reference, and the champion.

Each reader raises a typed error with a message that says what is missing, so the flow can report
"too little data" or "no reference" instead of a traceback.

The prediction log is read through ``core.predictions.read_predictions`` and
``read_feedback`` (pandas + SQLAlchemy only, no model code).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from core.contract import DatasetContract
from core.predictions import LogSchema
from core.settings import Settings
from monitoring.drift import LABEL_COLUMN


class SourceError(RuntimeError):
    """A monitoring input is missing or unreadable."""


class ReferenceMissingError(SourceError):
    pass


# ---- the prediction log ------------------------------------------------------------------------------
def read_window(
    settings: Settings,
    *,
    window_rows: int | None,
    window_hours: float | None,
    now: datetime | None = None,
) -> pd.DataFrame:
    """The newest ``window_rows`` predictions and/or those of the last ``window_hours``, with labels.

    ``label`` is the latest feedback label for each request_id (NaN where none has arrived).
    The database cuts the window (``read_predictions(limit=N, newest=True)``), and feedback is read from
    the window's first prediction on (a label arrives after its prediction), so a run never reads the
    whole log.
    """
    from core.predictions import read_feedback, read_predictions

    since = None if window_hours is None else (now or datetime.now(UTC)) - timedelta(hours=window_hours)
    try:
        window = read_predictions(settings.prediction_log_url, since=since, limit=window_rows, newest=True)
        first = pd.to_datetime(window["timestamp"]).min() if len(window) else None
        feedback = read_feedback(settings.prediction_log_url, since=None if first is None else first.to_pydatetime())
    except Exception as exc:  # a database error of any driver: report it as one clear failure
        raise SourceError(f"could not read the prediction log at {settings.prediction_log_url}: {exc}") from exc
    return _served_rows(window, feedback, settings.contract)


def _served_rows(window: pd.DataFrame, feedback: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """Logged rows as monitoring reads them: the inputs under the contract's names, the model's output,
    and ``label``, the latest feedback label of each request_id (NaN where none has arrived)."""
    if window.empty:
        return window
    labels = None
    if not feedback.empty:
        # read_feedback orders by received_at: the last label per request wins.
        labels = feedback.drop_duplicates("request_id", keep="last").set_index("request_id")["label"]
    schema = LogSchema(contract)
    # The inputs under the contract's names, then the model's output and the label (settings refuse an
    # input column named like one of these).
    out = schema.inputs(window).copy()
    for column in ("prediction", "probability", *schema.proba_sql.values()):
        if column in window:
            out[column] = window[column]
    for column in ("request_id", "model_version"):  # kept where no input column has the name
        if column in window and column not in out:
            out[column] = window[column]
    out[LABEL_COLUMN] = window["request_id"].map(labels) if labels is not None else np.nan
    return out


@dataclass(frozen=True)
class LogSlice:
    """One partition of a window: the logged rows with ``first <= timestamp <= last``, as `read_window`
    returns them. Called where it runs (a Dask worker reads the log itself), so the log's URL must be
    reachable from there."""

    url: str
    contract: DatasetContract
    first: datetime
    last: datetime
    rows: int  # as counted when the window was cut

    def __call__(self) -> pd.DataFrame:
        from core.predictions import read_feedback, read_predictions

        window = read_predictions(self.url, since=self.first, until=self.last)
        # Labels arrive after their prediction: those of the slice's own requests, received since its first row.
        labels = read_feedback(self.url, since=self.first, of_predictions=(self.first, self.last))
        return _served_rows(window, labels, self.contract)


def window_slices(
    settings: Settings,
    *,
    window_rows: int | None,
    window_hours: float | None,
    rows_per_slice: int,
    now: datetime | None = None,
) -> list[LogSlice]:
    """The window `read_window` reads, cut into slices of about ``rows_per_slice`` rows by timestamp, for
    a reader that never holds the whole window. Only the window's timestamps are read here.

    A cut never falls between rows of the same timestamp, so no row is in two slices; a slice holds every
    row of its timestamps, which can add rows to the oldest slice when several rows share the window's
    oldest timestamp and `window_rows` cut between them.
    """
    from core.predictions import read_prediction_times

    since = None if window_hours is None else (now or datetime.now(UTC)) - timedelta(hours=window_hours)
    try:
        times = read_prediction_times(settings.prediction_log_url, since=since, limit=window_rows)
    except Exception as exc:  # a database error of any driver: report it as one clear failure
        raise SourceError(f"could not read the prediction log at {settings.prediction_log_url}: {exc}") from exc
    slices: list[LogSlice] = []
    start = 0
    while start < len(times):
        end = min(start + rows_per_slice, len(times))
        while end < len(times) and times[end] == times[end - 1]:
            end += 1
        slices.append(
            LogSlice(settings.prediction_log_url, settings.contract, times[start], times[end - 1], end - start)
        )
        start = end
    return slices


# ---- the reference -----------------------------------------------------------------------------------
def load_reference(settings: Settings) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The reference split of the latest processed dataset, and that dataset's manifest (with its version)."""
    from core.data.datasets import latest_processed  # keeps this module light to import

    try:
        processed = latest_processed(settings)
        reference = processed.load("reference")
    except Exception as exc:  # no pointer, no manifest, no parquet: all mean "nothing to compare with"
        raise ReferenceMissingError(f"no reference: {exc}") from exc
    if reference.empty:
        raise ReferenceMissingError(f"no reference: the reference split of version {processed.version} is empty")
    return reference, {**processed.manifest, "version": processed.version}


# ---- the champion ------------------------------------------------------------------------------------
@dataclass
class Champion:
    version: str
    run_id: str | None
    holdout_metric: float | None
    model: Any | None  # the scikit-learn Pipeline, when it could be loaded


def load_champion(settings: Settings, *, load_model: bool = True) -> Champion | None:
    """The model version behind the serving alias, its recorded holdout metric, and the model itself.

    None when no model carries the alias (nothing has been promoted yet).
    """
    import mlflow  # heavy; the flow is the only caller
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    alias = settings.serving.model_alias
    try:
        mv = client.get_model_version_by_alias(settings.model_name, alias)
    except MlflowException:
        return None
    key = settings.monitoring.champion_metric_prefix + settings.monitoring.performance_metric
    holdout: float | None = None
    if mv.run_id:
        holdout = client.get_run(mv.run_id).data.metrics.get(key)
    if holdout is None and key in (mv.tags or {}):
        holdout = float(mv.tags[key])
    model = None
    if load_model:
        from core.registry.artefact import load_version

        model, _ = load_version(f"models:/{settings.model_name}/{mv.version}", settings.mlflow_tracking_uri)
    return Champion(version=str(mv.version), run_id=mv.run_id, holdout_metric=holdout, model=model)


def reference_predictions(model: Any, reference: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """The champion's outputs on the reference, for prediction drift.

    Binary: ``probability`` of the positive class only. The served ``prediction`` label depends on a
    decision threshold chosen at training, which a plain ``predict`` here would not reproduce, so only the
    score is compared. Multiclass and regression: ``prediction``.
    """
    from core.modeling.features import to_model_input  # keeps this module light to import

    contract = settings.contract
    X = to_model_input(reference, contract)
    if contract.task == "binary" and hasattr(model, "predict_proba"):
        classes = [str(c) for c in getattr(model, "classes_", contract.target.classes or ())]
        col = classes.index(str(contract.target.positive_class)) if classes else 1
        return pd.DataFrame({"probability": model.predict_proba(X)[:, col]}, index=reference.index)
    return pd.DataFrame({"prediction": model.predict(X)}, index=reference.index)
