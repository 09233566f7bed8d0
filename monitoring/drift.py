"""The monitoring computation: a window of served rows against the reference, all derived from the contract.

What is compared
    * Data drift per feature column and for the dataset (Evidently ``DataDriftPreset``, column types from
      the contract: ``numerical_columns`` for float/int/bool, ``categorical_columns`` for category/string;
      id, timestamp and target are never drift-tested).
    * Prediction drift: the ``probability`` (and ``prediction``) columns, when both frames carry them.
    * Data quality of the whole window, judged against the contract rather than the reference: missing
      values (and missing values in columns the contract says are not nullable), categories the contract
      does not list, numbers outside the contract's [min, max].
    * Performance, from the contract's task, on the window rows whose feedback label has arrived.

Sampling and its statistical power
    The drift tests run on seeded uniform samples: at most ``reference_sample_rows`` of the reference and
    ``window_sample_rows`` of the window. Evidently picks a test by the size of the reference it is given:
    up to 1,000 rows K-S / chi-square / Z p-values (p < 0.05), above that the normalised Wasserstein
    distance (numerical) and the Jensen-Shannon distance (categorical), drift when >= 0.1. The sample
    sizes are kept above 1,000 (settings refuse less) so that the sampled run uses the *same* tests and
    thresholds as a run on all rows; the sample only adds estimation noise to a distance. That noise is
    of order 1/sqrt(n): with 50,000 rows a normalised Wasserstein distance moves by ~0.005-0.01 between
    samples, and the Jensen-Shannon distance of an 8-category column under no drift has a bias of about
    sqrt((k - 1) / (8 n ln 2)) ~ 0.005, both an order of magnitude below the 0.1 threshold. A column's
    verdict can therefore only differ from the full-data run when its true distance lies within ~0.01 of
    the threshold. ``make bench-drift`` measures this agreement on 1,000,000 vs 100,000 rows.
    Data quality and performance are computed on the whole window, not on the sample.

Evidently is imported inside the functions that need it: it takes seconds to import, and serving must never
pay that (serving/ruff.toml bans it there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn import metrics as skm

from core.contract import DatasetContract, label_text
from core.data.rules import ContractChecker
from core.modeling.catalogue import metric_names, spec
from core.modeling.features import to_model_input
from core.modeling.metrics import metric_value
from core.modeling.training import encode_target
from core.predictions import LogSchema

if TYPE_CHECKING:
    from evidently import DataDefinition
    from evidently.core.report import Snapshot

PREDICTION_COLUMNS = ("prediction", "probability")
LABEL_COLUMN = "label"  # the feedback label, joined onto the window by request_id
_MAX_LISTED_CATEGORIES = 20


class DriftError(RuntimeError):
    """The drift computation could not run (the Evidently report failed, or a frame lacks columns)."""


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: Literal["numerical", "categorical"]
    test: str
    threshold: float
    score: float
    drifted: bool


@dataclass(frozen=True)
class DataQuality:
    rows: int
    missing: dict[str, int]
    # Missing values in columns the contract declares not nullable.
    unexpected_missing: dict[str, int]
    # Rows per column whose category the contract does not list, and which values those were.
    new_category_rows: dict[str, int]
    new_categories: dict[str, list[str]]
    out_of_range: dict[str, int]

    @property
    def total_missing(self) -> int:
        return sum(self.missing.values())

    @property
    def total_new_category_rows(self) -> int:
        return sum(self.new_category_rows.values())

    @property
    def total_out_of_range(self) -> int:
        return sum(self.out_of_range.values())


@dataclass(frozen=True)
class Performance:
    labelled_rows: int
    metrics: dict[str, float]


@dataclass
class DriftResult:
    reference_rows: int
    window_rows: int
    reference_sample_rows: int
    window_sample_rows: int
    # Share of feature columns whose test says "drift" (prediction columns are reported separately).
    drift_share: float
    dataset_drift: bool
    columns: dict[str, ColumnDrift]
    prediction: dict[str, ColumnDrift]
    quality: DataQuality
    performance: Performance | None
    snapshot: Snapshot = field(repr=False)
    # Evidently's classification/regression report on the labelled window rows (None without labels).
    performance_snapshot: Snapshot | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def drifted_columns(self) -> list[str]:
        return [c for c, d in self.columns.items() if d.drifted]

    @property
    def prediction_drift(self) -> bool:
        return any(d.drifted for d in self.prediction.values())


# ---- contract mapping ------------------------------------------------------------------------------------
def column_mapping(contract: DatasetContract, frame_columns: list[str] | None = None) -> dict[str, list[str]]:
    """Numerical and categorical drift columns from the contract, plus the prediction columns present.

    ``frame_columns`` restricts the prediction columns to those the frames carry (both frames must).
    """
    numerical = list(contract.numeric_features)
    categorical = list(contract.categorical_features)
    present = set(frame_columns or ())
    if "probability" in present:
        numerical.append("probability")
    if "prediction" in present:
        # A class label is categorical; a regression prediction is a number.
        (categorical if contract.is_classification else numerical).append("prediction")
    return {"numerical": numerical, "categorical": categorical}


def data_definition(contract: DatasetContract, frame_columns: list[str] | None = None) -> DataDefinition:
    from evidently import DataDefinition  # slow import, see the module docstring

    mapping = column_mapping(contract, frame_columns)
    return DataDefinition(numerical_columns=mapping["numerical"], categorical_columns=mapping["categorical"])


def drift_frame(frame: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """The contract's feature columns with their declared dtypes, plus any prediction columns."""
    # A shallow copy: columns are added below, never written through to the caller's frame (nor warned about).
    out = to_model_input(frame, contract)[contract.feature_columns].copy(deep=False)
    for col in PREDICTION_COLUMNS:
        if col in frame:
            out[col] = frame[col]
    if "prediction" in out and contract.is_classification:
        out["prediction"] = class_labels(out["prediction"])
    if "probability" in out:
        out["probability"] = pd.to_numeric(out["probability"], errors="coerce").astype("float64")
    return out


def class_labels(values: pd.Series) -> pd.Series:
    """Class labels as strings, with 1, 1.0 and "1" one class: storage round trips change their type.
    Booleans read as core.contract.label_text writes them ("true", "false")."""
    if values.map(lambda v: isinstance(v, bool | np.bool_)).any():
        values = values.map(lambda v: label_text(v) if isinstance(v, bool | np.bool_) else v)
    numbers = pd.to_numeric(values, errors="coerce")
    integral = numbers.notna() & (numbers == np.floor(numbers))
    out = values.astype("object").where(values.isna(), values.astype(str))
    out[integral] = numbers[integral].astype("int64").astype(str)
    return out


def sample_rows(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded uniform sample of at most ``n`` rows (the frame itself when it is not larger)."""
    if len(frame) <= n:
        return frame
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(frame), size=n, replace=False))
    return frame.iloc[idx]


# ---- data quality and performance (whole window) ---------------------------------------------------------
def data_quality(window: pd.DataFrame, contract: DatasetContract) -> DataQuality:
    """Missing values, unknown categories and out-of-range numbers, judged by the contract's checker (the
    one collection and the batch API run)."""
    columns = [c for c in contract.input_columns if c in window]
    checked = ContractChecker(contract, columns).check(window[columns])
    missing = {name: int(checked.typed[name].null_count) for name in columns}
    by_kind: dict[str, dict[str, np.ndarray]] = {}
    for fault in checked.faults:
        by_kind.setdefault(fault.kind, {})[fault.column] = fault.mask
    unknown = {**by_kind.get("unknown category", {}), **checked.unknown}
    new_values = {}
    for name, mask in unknown.items():
        values = checked.typed[name].filter(pa.array(mask)).to_pylist()
        new_values[name] = sorted({str(v) for v in values})[:_MAX_LISTED_CATEGORIES]
    return DataQuality(
        rows=len(window),
        missing=missing,
        unexpected_missing={c: int(m.sum()) for c, m in by_kind.get("null", {}).items()},
        new_category_rows={c: int(m.sum()) for c, m in unknown.items()},
        new_categories=new_values,
        out_of_range={c: int(m.sum()) for c, m in by_kind.get("out of range", {}).items()},
    )


def performance(window: pd.DataFrame, contract: DatasetContract) -> Performance | None:
    """Every metric of the task's catalogue on the window rows with a feedback label (the same code that
    scores models in training and the gate); None when no row has one.

    Metrics that read probabilities use the logged ones (``probability`` for binary, the ``p_<label>``
    columns for multiclass); metrics that read labels use the labels the service answered with (its
    threshold, not a new one). Binary also reports precision and recall of the positive class.
    """
    rows = rows_with_labels(window)
    if rows.empty:
        return None
    task = contract.task
    schema = LogSchema(contract)
    if task == "regression":
        y = pd.to_numeric(rows[LABEL_COLUMN], errors="coerce").to_numpy(dtype=float)
        scores = pd.to_numeric(rows["prediction"], errors="coerce").to_numpy(dtype=float)
        out = {m: metric_value(task, m, y, scores) for m in metric_names(task)}
        return Performance(labelled_rows=len(rows), metrics={k: v for k, v in out.items() if np.isfinite(v)})
    classes = contract.classes
    y = encode_target(class_labels(rows[LABEL_COLUMN]).to_numpy(), contract, classes)
    predicted = encode_target(class_labels(rows["prediction"]).to_numpy(), contract, classes)
    logged: np.ndarray | None = schema.scores(rows)
    if logged is not None and np.isnan(logged).any():
        logged = None  # a row without a logged probability: probability metrics are not judged
    # Without probabilities, label metrics still read the answered labels (as scores that decide them).
    decided = predicted.astype(float) if task == "binary" else np.eye(len(classes))[predicted]
    out = {}
    for m in metric_names(task):
        if spec(task, m).needs == "proba" and logged is None:
            continue
        value = metric_value(task, m, y, logged if logged is not None else decided, predicted=predicted)
        if np.isfinite(value):
            out[m] = value
    if task == "binary":
        out["precision"] = float(skm.precision_score(y, predicted, zero_division=0))
        out["recall"] = float(skm.recall_score(y, predicted, zero_division=0))
    return Performance(labelled_rows=len(rows), metrics=out)


def run_performance_report(window: pd.DataFrame, contract: DatasetContract) -> Snapshot | None:
    """Evidently's ``ClassificationPreset``/``RegressionPreset`` on the window rows with a label.

    Binary labels and predictions are mapped to 1 (the contract's positive class) and 0, so Evidently
    never has to guess which class is positive.
    """
    from evidently import BinaryClassification, DataDefinition, Dataset, MulticlassClassification, Report
    from evidently import Regression as RegressionTask
    from evidently.presets import ClassificationPreset, RegressionPreset

    rows = rows_with_labels(window)
    if rows.empty:
        return None
    frame = pd.DataFrame(index=rows.index)
    if contract.task == "regression":
        frame["target"] = pd.to_numeric(rows[LABEL_COLUMN], errors="coerce")
        frame["prediction"] = pd.to_numeric(rows["prediction"], errors="coerce")
        definition = DataDefinition(regression=[RegressionTask(target="target", prediction="prediction")])
        preset: Any = RegressionPreset()
    elif contract.task == "binary":
        positive = str(contract.target.positive_class)
        frame["target"] = (class_labels(rows[LABEL_COLUMN]) == positive).astype(int)
        frame["prediction"] = (class_labels(rows["prediction"]) == positive).astype(int)
        probas = None
        if "probability" in rows and rows["probability"].notna().all():
            frame["probability"] = pd.to_numeric(rows["probability"]).astype("float64")
            probas = "probability"
        task = BinaryClassification(
            target="target",
            prediction_labels="prediction",
            prediction_probas=probas,
            pos_label=1,
        )
        definition = DataDefinition(classification=[task])
        preset = ClassificationPreset()
    else:
        frame["target"] = class_labels(rows[LABEL_COLUMN])
        frame["prediction"] = class_labels(rows["prediction"])
        definition = DataDefinition(
            classification=[MulticlassClassification(target="target", prediction_labels="prediction")]
        )
        preset = ClassificationPreset()
    return Report([preset]).run(current_data=Dataset.from_pandas(frame, data_definition=definition))


# ---- the drift report ------------------------------------------------------------------------------------
def run_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    definition: DataDefinition,
    *,
    drift_share: float = 0.5,
    methods: dict[str, str] | None = None,
) -> Snapshot:
    """``Report([DataDriftPreset()])`` with per-column tests, so each column's verdict can be read back.
    ``methods``: a registered stat test per column, instead of the one Evidently picks."""
    from evidently import Dataset, Report  # slow import, see the module docstring
    from evidently.presets import DataDriftPreset

    preset = DataDriftPreset(drift_share=drift_share, per_column_method=dict(methods) if methods else None)
    report = Report([preset], include_tests=True)
    return report.run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )


def column_verdicts(snapshot: Snapshot, numerical: list[str]) -> dict[str, ColumnDrift]:
    """Per-column score, test and verdict, read from the snapshot's ValueDrift metrics and their tests.

    The verdict comes from Evidently's own test status, not re-derived here: a p-value test drifts below
    its threshold, a distance above it, and Evidently already knows which is which.
    """
    raw = snapshot.dict()
    status = {
        t["bound_test"]["metric_fingerprint"]: t["status"]
        for t in raw.get("tests", [])
        if t.get("id") == "drift" and "bound_test" in t
    }
    out: dict[str, ColumnDrift] = {}
    for m in raw["metrics"]:
        cfg = m.get("config", {})
        if cfg.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        name = str(cfg["column"])
        if m["id"] not in status:
            raise DriftError(f"the report has no drift test result for column '{name}'")
        out[name] = ColumnDrift(
            column=name,
            kind="numerical" if name in numerical else "categorical",
            test=str(cfg.get("method")),
            threshold=float(cfg.get("threshold")),
            score=float(m["value"]),
            drifted=status[m["id"]] == "FAIL",
        )
    return out


def compute_drift(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    contract: DatasetContract,
    *,
    reference_sample_rows: int = 50_000,
    window_sample_rows: int = 50_000,
    drift_share: float = 0.5,
    seed: int = 42,
) -> DriftResult:
    """Compare ``window`` (served rows, optionally with ``label``) with ``reference`` (training rows).

    Both frames hold the contract's columns; ``prediction``/``probability`` in both enable prediction
    drift. Raises DriftError when a frame lacks feature columns or the report fails.
    """
    for role, frame in (("reference", reference), ("window", window)):
        absent = [c for c in contract.feature_columns if c not in frame]
        if absent:
            raise DriftError(f"the {role} lacks the contract's feature columns {absent}")
    shared = [c for c in PREDICTION_COLUMNS if c in reference and c in window]
    # Sample first, then coerce types: a million-row reference is never copied whole.
    ref = drift_frame(
        sample_rows(reference, reference_sample_rows, seed)[[*contract.feature_columns, *shared]], contract
    )
    cur = drift_frame(sample_rows(window, window_sample_rows, seed + 1)[[*contract.feature_columns, *shared]], contract)
    snapshot, verdicts = report_verdicts(ref, cur, contract, shared, drift_share=drift_share)
    return drift_result(
        verdicts,
        shared,
        contract,
        rows=(len(reference), len(window)),
        sample_rows=(len(ref), len(cur)),
        drift_share=drift_share,
        quality=data_quality(window, contract),
        labelled=window,
        snapshot=snapshot,
    )


def report_verdicts(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    contract: DatasetContract,
    prediction_columns: list[str],
    *,
    drift_share: float,
    methods: dict[str, str] | None = None,
) -> tuple[Snapshot, dict[str, ColumnDrift]]:
    """Evidently's drift report on two frames in `drift_frame`'s form, and each column's verdict read back
    from it; whatever Evidently raises becomes one DriftError."""
    numerical = column_mapping(contract, prediction_columns)["numerical"]
    try:
        definition = data_definition(contract, prediction_columns)
        snapshot = run_drift_report(reference, current, definition, drift_share=drift_share, methods=methods)
        return snapshot, column_verdicts(snapshot, numerical)
    except DriftError:
        raise
    except Exception as exc:  # Evidently raises many types; the caller needs one clear failure
        raise DriftError(f"the Evidently drift report failed: {type(exc).__name__}: {exc}") from exc


def drift_result(
    verdicts: dict[str, ColumnDrift],
    prediction_columns: list[str],
    contract: DatasetContract,
    *,
    rows: tuple[int, int],
    sample_rows: tuple[int, int],
    drift_share: float,
    quality: DataQuality,
    labelled: pd.DataFrame,
    snapshot: Snapshot,
) -> DriftResult:
    """The result from per-column verdicts, however they were computed (here on samples, or from merged
    per-partition statistics: monitoring/merged_drift.py): the share of drifted feature columns, the
    dataset's verdict, and performance on the rows of `labelled` that have a label (any other row is
    ignored, so the whole window and its labelled rows alone give the same)."""
    perf = performance(labelled, contract)
    perf_snapshot, notes = None, []
    if perf is not None:
        try:
            perf_snapshot = run_performance_report(labelled, contract)
        except Exception as exc:  # the metrics above stand without Evidently's view of them
            notes.append(f"performance report not built: {type(exc).__name__}: {exc}")
    features = {c: verdicts[c] for c in contract.feature_columns if c in verdicts}
    share = sum(d.drifted for d in features.values()) / len(features) if features else 0.0
    return DriftResult(
        reference_rows=rows[0],
        window_rows=rows[1],
        reference_sample_rows=sample_rows[0],
        window_sample_rows=sample_rows[1],
        drift_share=share,
        dataset_drift=share >= drift_share,
        columns=features,
        prediction={c: verdicts[c] for c in prediction_columns if c in verdicts},
        quality=quality,
        performance=perf,
        snapshot=snapshot,
        performance_snapshot=perf_snapshot,
        notes=notes,
    )


def rows_with_labels(window: pd.DataFrame) -> pd.DataFrame:
    """The rows performance reads: those with a feedback label and a logged prediction."""
    if LABEL_COLUMN not in window or "prediction" not in window:
        return window.iloc[:0]
    return window[window[LABEL_COLUMN].notna() & window["prediction"].notna()]


def merge_quality(parts: list[DataQuality]) -> DataQuality:
    """Data quality of several partitions as one: counts add up; the new categories listed are the first
    ones in sorted order, as `data_quality` lists them for the whole."""

    def add(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in parts:
            for column, n in getattr(part, key).items():
                out[column] = out.get(column, 0) + n
        return out

    new: dict[str, set[str]] = {}
    for part in parts:
        for column, values in part.new_categories.items():
            new.setdefault(column, set()).update(values)
    return DataQuality(
        rows=sum(p.rows for p in parts),
        missing=add("missing"),
        unexpected_missing=add("unexpected_missing"),
        new_category_rows=add("new_category_rows"),
        new_categories={c: sorted(v)[:_MAX_LISTED_CATEGORIES] for c, v in new.items()},
        out_of_range=add("out_of_range"),
    )


def metrics_for_logging(result: DriftResult) -> dict[str, float]:
    """Flat numeric metrics: what MLflow charts over time and the Evidently dashboard panels read."""
    out: dict[str, float] = {
        "drift_share": result.drift_share,
        "dataset_drift": float(result.dataset_drift),
        "drifted_columns": float(len(result.drifted_columns)),
        "window_rows": float(result.window_rows),
        "missing_values": float(result.quality.total_missing),
        "new_category_rows": float(result.quality.total_new_category_rows),
        "out_of_range_values": float(result.quality.total_out_of_range),
        "prediction_drift": float(result.prediction_drift),
    }
    for name, d in {**result.columns, **result.prediction}.items():
        out[f"drift_score_{metric_key(name)}"] = d.score
    if result.performance is not None:
        out["labelled_rows"] = float(result.performance.labelled_rows)
        for name, value in result.performance.metrics.items():
            out[f"perf_{name}"] = value
    return out


def metric_key(column: str) -> str:
    """A column's name as an MLflow metric name holds it: characters MLflow refuses (parentheses, €, ...)
    become ``_``; a name MLflow takes stays as it is."""
    return re.sub(r"[^\w.\- /]", "_", column)


def summary(result: DriftResult) -> dict[str, Any]:
    """A JSON-ready account of the result (everything but the snapshot)."""
    return {
        "reference_rows": result.reference_rows,
        "window_rows": result.window_rows,
        "reference_sample_rows": result.reference_sample_rows,
        "window_sample_rows": result.window_sample_rows,
        "drift_share": result.drift_share,
        "dataset_drift": result.dataset_drift,
        "columns": {c: d.__dict__ for c, d in result.columns.items()},
        "prediction": {c: d.__dict__ for c, d in result.prediction.items()},
        "quality": result.quality.__dict__,
        "performance": None if result.performance is None else result.performance.__dict__,
    }
