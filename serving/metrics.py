"""Prometheus metrics of the prediction service.

With several workers each is its own process, so `python -m serving` points PROMETHEUS_MULTIPROC_DIR
at a fresh directory and /metrics aggregates every worker's files; with one worker the default
in-process registry is used.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

REQUESTS = Counter("serving_requests_total", "HTTP requests by endpoint and status.", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "serving_request_duration_seconds",
    "Request latency by endpoint and status.",
    ["endpoint", "method", "status"],
    buckets=_LATENCY_BUCKETS,
)
PREDICTIONS = Counter("serving_predictions_total", "Predictions by model version and label.", ["version", "label"])
SCORES = Histogram(
    "serving_prediction_score",
    "The model's score: positive-class probability (binary), top-class probability (multiclass).",
    buckets=tuple(i / 20 for i in range(1, 21)),
)
UNKNOWN_CATEGORIES = Counter("serving_unknown_categories_total", "Unknown categories accepted.", ["column"])
MODEL_INFO = Gauge(
    "serving_model_info", "1 for the model version serving.", ["name", "version", "runtime"], multiprocess_mode="max"
)
RELOADS = Counter("serving_model_reloads_total", "Registry checks by result.", ["result"])
SHADOW = Counter(
    "serving_shadow_predictions_total",
    "Shadow scoring by outcome: scored, dropped (the queue was full; the client was answered anyway), error.",
    ["outcome"],
)
ROLLBACKS = Counter("serving_rollout_rollbacks_total", "Canaries stopped automatically, by limit crossed.", ["limit"])
LOG_ROWS = Counter("serving_prediction_log_rows_total", "Prediction-log rows by outcome.", ["outcome"])
LOG_BACKPRESSURE = Counter(
    "serving_prediction_log_backpressure_seconds",
    "Seconds requests waited for the prediction-log writer to catch up (its backlog passed log_max_backlog_rows).",
)
# The spool directory is shared by the workers, so each reports the same size; the most recent wins.
LOG_SPOOL_BYTES = Gauge(
    "serving_prediction_log_spool_bytes",
    "Bytes of prediction-log rows spooled while the store is unavailable, waiting to be replayed.",
    multiprocess_mode="mostrecent",
)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe a whole array at once: one bucket count per bucket instead of one call per value.

    prometheus_client has no bulk observe; this uses the histogram's own bucket values (the same
    objects `observe` increments, in-process or multiprocess), so the exposition is identical.
    """
    upper = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    if upper is None or buckets is None or len(values) < 32:
        for v in values.tolist():
            histogram.observe(v)
        return
    counts = np.bincount(np.searchsorted(np.asarray(upper), values, side="left"), minlength=len(upper))
    for bucket, n in zip(buckets, counts.tolist(), strict=True):
        if n:
            bucket.inc(n)
    histogram._sum.inc(float(values.sum()))


def set_model(name: str, version: str, runtime: str, previous: tuple[str, str, str] | None) -> None:
    """The served model's info gauge; `previous` is the (name, version, runtime) it replaces."""
    if previous is not None:
        MODEL_INFO.labels(*previous).set(0)
    MODEL_INFO.labels(name, version, runtime).set(1)


def render() -> tuple[bytes, str]:
    registry: Any
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
