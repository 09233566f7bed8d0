"""The prediction log's schema and its readers: what serving writes and monitoring reads.

Two tables. ``predictions``: request_id, model_name, model_version, timestamp, latency_ms, one column per
contract input column, prediction, probability, flags. ``feedback``: request_id, label, received_at (a
label arrives after its prediction; the latest per request id wins). The writer (a background thread
with a spool for store outages) lives in serving/prediction_log.py; monitoring reads through
:func:`read_predictions` and :func:`read_feedback`. Both sides import this module, neither imports the
other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from core.contract import DatasetContract
from core.databases import engine_for

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
_META = ("request_id", "model_name", "model_version", "timestamp", "latency_ms", "prediction", "probability", "flags")


def _label_type(contract: DatasetContract) -> sa.types.TypeEngine[Any]:
    if not contract.is_classification:
        return sa.Float()
    classes = contract.target.classes or ()
    return sa.Integer() if all(isinstance(c, int) for c in classes) else sa.String(200)


def tables(contract: DatasetContract, metadata: sa.MetaData | None = None) -> tuple[sa.Table, sa.Table]:
    metadata = metadata or sa.MetaData()
    clash = sorted(set(_META) & set(contract.input_columns))
    if clash:
        raise ValueError(f"contract columns {clash} clash with the prediction log's own columns")
    feature_cols = []
    for name in contract.input_columns:
        kind = contract.column(name).type
        col_type: sa.types.TypeEngine[Any] = (
            sa.Float() if kind in ("float", "int", "bool") else sa.DateTime() if kind == "datetime" else sa.String(200)
        )
        feature_cols.append(sa.Column(name, col_type, nullable=True))
    predictions = sa.Table(
        PREDICTIONS,
        metadata,
        sa.Column("request_id", sa.String(120), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(40), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        *feature_cols,
        sa.Column("prediction", _label_type(contract) if contract.is_classification else sa.Float()),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("flags", sa.String(1000), nullable=True),
    )
    feedback = sa.Table(
        FEEDBACK,
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(120), nullable=False, index=True),
        sa.Column("label", _label_type(contract), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    return predictions, feedback


# ---- readers: pandas + SQLAlchemy only ------------------------------------------------------------


def read_predictions(
    url: str, since: datetime | None = None, limit: int | None = None, *, newest: bool = False
) -> pd.DataFrame:
    """Logged predictions, oldest first; `since` filters on the prediction timestamp (UTC).

    `limit` keeps the oldest rows, or with `newest=True` the newest ones (still returned oldest first):
    the database does the cut, so a monitoring window never reads the whole log.
    """
    engine = engine_for(url)
    try:
        if not sa.inspect(engine).has_table(PREDICTIONS):
            return pd.DataFrame(columns=list(_META))  # nothing logged yet
        table = sa.Table(PREDICTIONS, sa.MetaData(), autoload_with=engine)
        query = sa.select(table).order_by(table.c.timestamp.desc() if newest else table.c.timestamp)
        if since is not None:
            query = query.where(table.c.timestamp >= since)
        if limit is not None:
            query = query.limit(limit)
        with engine.connect() as conn:
            frame = pd.read_sql(query, conn)
        return frame.iloc[::-1].reset_index(drop=True) if newest else frame
    finally:
        engine.dispose()


def read_feedback(url: str, since: datetime | None = None) -> pd.DataFrame:
    """Every label received (since `since`, on the time it was received), the latest per request id last."""
    engine = engine_for(url)
    try:
        if not sa.inspect(engine).has_table(FEEDBACK):
            return pd.DataFrame(columns=["request_id", "label", "received_at"])
        table = sa.Table(FEEDBACK, sa.MetaData(), autoload_with=engine)
        query = sa.select(table.c.request_id, table.c.label, table.c.received_at).order_by(table.c.received_at)
        if since is not None:
            query = query.where(table.c.received_at >= since)
        with engine.connect() as conn:
            return pd.read_sql(query, conn)
    finally:
        engine.dispose()
