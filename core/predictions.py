"""The prediction log's schema and its readers: what serving writes and monitoring reads.

Two tables. ``predictions``: request_id, model_name, model_version, timestamp, latency_ms, one column per
contract input column, prediction, probability, flags, source (``online`` from the API, ``batch`` from
the scoring flow; NULL in a log written before the column existed, read as ``online``). ``feedback``:
request_id, label, received_at (a label arrives after its prediction; the latest per request id wins).
The writer (a background thread with a spool for store outages) lives in serving/prediction_log.py;
monitoring reads through
:func:`read_predictions` and :func:`read_feedback`. Both sides import this module, neither imports the
other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from core.contract import DatasetContract, identifier, label_text
from core.databases import engine_for

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
META = (
    "request_id",
    "model_name",
    "model_version",
    "timestamp",
    "latency_ms",
    "prediction",
    "probability",
    "flags",
    "source",
)
SOURCE = "source"
ONLINE, BATCH = "online", "batch"
_META = META  # the log's own columns, before and after the contract's


class LogSchema:
    """The prediction log's columns for one contract, and the mapping between them and the contract.

    Input columns are stored under the contract's code-safe identifiers (``Body mass (g)`` ->
    ``Body_mass_g``; one that equals a column of the log's own gets ``_in`` appended). A binary model's
    score is ``probability`` (P(positive)); a multiclass model's class probabilities are ``p_<label>``
    columns, so monitoring can compute every metric of the catalogue from the log.
    """

    def __init__(self, contract: DatasetContract) -> None:
        self.contract = contract
        self.proba_sql: dict[str, str] = (
            {label_text(c): f"p_{identifier(label_text(c))}" for c in contract.classes}
            if contract.task == "multiclass"
            else {}
        )
        taken = set(META) | set(self.proba_sql.values())
        self.input_sql: dict[str, str] = {}
        for name in contract.input_columns:
            key = contract.identifiers[name]
            self.input_sql[name] = f"{key}_in" if key in taken else key
        names = [*META, *self.input_sql.values(), *self.proba_sql.values()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"prediction log columns {dupes} would be ambiguous for contract '{contract.name}'")
        self.label_is_text = contract.is_classification and not all(
            isinstance(c, int) and not isinstance(c, bool) for c in contract.classes
        )

    def label_type(self) -> sa.types.TypeEngine[Any]:
        if not self.contract.is_classification:
            return sa.Float()
        return sa.String(200) if self.label_is_text else sa.Integer()

    def label_value(self, value: Any) -> Any:
        """A label as the log stores it (text for string and boolean labels)."""
        if value is None or not self.label_is_text:
            return value
        return label_text(value)

    def tables(self, metadata: sa.MetaData | None = None) -> tuple[sa.Table, sa.Table]:
        metadata = metadata or sa.MetaData()
        feature_cols = []
        for name, sql in self.input_sql.items():
            kind = self.contract.column(name).type
            col_type: sa.types.TypeEngine[Any] = (
                sa.Float()
                if kind in ("float", "int", "bool")
                else sa.DateTime()
                if kind == "datetime"
                else sa.String(200)
            )
            feature_cols.append(sa.Column(sql, col_type, nullable=True))
        predictions = sa.Table(
            PREDICTIONS,
            metadata,
            sa.Column("request_id", sa.String(120), primary_key=True),
            sa.Column("model_name", sa.String(200), nullable=False),
            sa.Column("model_version", sa.String(40), nullable=False),
            sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False, index=True),
            sa.Column("latency_ms", sa.Float(), nullable=False),
            *feature_cols,
            sa.Column("prediction", self.label_type()),
            sa.Column("probability", sa.Float(), nullable=True),
            sa.Column("flags", sa.String(1000), nullable=True),
            # Which path predicted: NULL (the API writer leaves it unset) reads as online; see ensure_tables.
            sa.Column(SOURCE, sa.String(20), nullable=True),
            *(sa.Column(sql, sa.Float(), nullable=True) for sql in self.proba_sql.values()),
        )
        feedback = sa.Table(
            FEEDBACK,
            metadata,
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("request_id", sa.String(120), nullable=False, index=True),
            sa.Column("label", self.label_type(), nullable=False),
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        )
        return predictions, feedback

    def block_key(self, sql_column: str) -> str:
        """Where a writer finds a SQL column's values in a block: the contract's column name for an input,
        ``proba:<label>`` for a class probability, else the column's own name."""
        for name, sql in self.input_sql.items():
            if sql == sql_column:
                return name
        for label, sql in self.proba_sql.items():
            if sql == sql_column:
                return f"proba:{label}"
        return sql_column

    def inputs(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The logged input columns under the contract's names (the log's own columns dropped)."""
        present = {sql: name for name, sql in self.input_sql.items() if sql in frame}
        return frame[list(present)].rename(columns=present)

    def scores(self, frame: pd.DataFrame) -> np.ndarray | None:
        """What each logged prediction scored, as the metrics read it: P(positive) for binary, class
        probabilities in the contract's class order for multiclass, the value for regression."""
        if self.contract.task == "regression":
            return pd.to_numeric(frame["prediction"], errors="coerce").to_numpy(dtype=np.float64)
        if self.contract.task == "binary":
            if "probability" not in frame:
                return None
            return pd.to_numeric(frame["probability"], errors="coerce").to_numpy(dtype=np.float64)
        columns = list(self.proba_sql.values())
        if not all(c in frame for c in columns):
            return None
        return frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


def tables(contract: DatasetContract, metadata: sa.MetaData | None = None) -> tuple[sa.Table, sa.Table]:
    """The two tables of the prediction log for `contract` (see LogSchema)."""
    return LogSchema(contract).tables(metadata)


def ensure_tables(conn: sa.Connection, metadata: sa.MetaData) -> None:
    """Create the log's tables if missing, and bring an older log up to date: a ``predictions`` table
    written before the ``source`` column existed gets it (NULL for its rows, which read as online).
    Both writers call this before their first insert; an added nullable column is safe on SQLite and
    PostgreSQL alike."""
    metadata.create_all(conn)
    existing = {c["name"] for c in sa.inspect(conn).get_columns(PREDICTIONS)}
    if SOURCE not in existing:
        quote = conn.dialect.identifier_preparer.quote
        conn.exec_driver_sql(f"ALTER TABLE {quote(PREDICTIONS)} ADD COLUMN {quote(SOURCE)} VARCHAR(20)")


def _with_source(frame: pd.DataFrame) -> pd.DataFrame:
    """Every row's source, ``online`` where the log predates the column or the API left it unset."""
    frame[SOURCE] = frame[SOURCE].fillna(ONLINE) if SOURCE in frame else ONLINE
    return frame


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
            frame = _with_source(pd.read_sql(query, conn))
        return frame.iloc[::-1].reset_index(drop=True) if newest else frame
    finally:
        engine.dispose()


def read_prediction(url: str, request_id: str) -> pd.DataFrame:
    """The logged prediction with this request id: zero or one row (GET /explain reads its inputs back)."""
    engine = engine_for(url)
    try:
        if not sa.inspect(engine).has_table(PREDICTIONS):
            return pd.DataFrame(columns=list(_META))
        table = sa.Table(PREDICTIONS, sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            return _with_source(pd.read_sql(sa.select(table).where(table.c.request_id == request_id), conn))
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
