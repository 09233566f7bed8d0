"""The prediction log's schema and its readers: what serving writes and monitoring reads.

Two tables. ``predictions``: request_id, model_name, model_version, timestamp, latency_ms, one column per
contract input column, prediction, probability, flags, role, source. ``role`` says which model made the row:
``champion`` (the default), ``canary`` (the challenger answered the client) or ``shadow`` (the challenger
scored the request off the response path); the primary key is (request_id, role), so a shadow row keeps the
request id of the answer it shadows. The readers return served rows (champion and canary) unless asked.
``source`` says which path predicted: ``online`` (the API) or ``batch`` (the scoring flow); NULL in a log
written before the column existed, read as ``online``.
``feedback``: request_id, label, received_at (a label arrives after its prediction; the latest per request
id wins). The writer (a background thread with a spool for store outages) lives in serving/prediction_log.py;
monitoring reads through :func:`read_predictions` and :func:`read_feedback`. Both sides import this module,
neither imports the other.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from core.contract import DatasetContract, identifier, label_text
from core.databases import create_tables, engine_for

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
META = ("request_id", "model_name", "model_version", "timestamp", "latency_ms", "prediction", "probability", "flags")
_META = (*META, "role", "source")  # the log's own columns, before and after the contract's
ROLES = ("champion", "canary", "shadow")
SERVED_ROLES = ("champion", "canary")  # the rows a client was answered with
DEFAULT_ROLE = "champion"  # rows logged before roles existed were all the champion's
SOURCE = "source"
ONLINE, BATCH = "online", "batch"
# The last columns, in order, and what a row spooled before each existed holds there.
TRAILING_DEFAULTS: tuple[Any, ...] = (DEFAULT_ROLE, None)


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
        taken = set(_META) | set(self.proba_sql.values())
        self.input_sql: dict[str, str] = {}
        for name in contract.input_columns:
            key = contract.identifiers[name]
            self.input_sql[name] = f"{key}_in" if key in taken else key
        names = [*_META, *self.input_sql.values(), *self.proba_sql.values()]
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
            *(sa.Column(sql, sa.Float(), nullable=True) for sql in self.proba_sql.values()),
            # Last, so that rows spooled before roles existed (one value fewer) still line up.
            _role_column(),
            # Which path predicted: NULL (the API's writer leaves it unset) reads as online; after role, so
            # that rows spooled before it existed line up too (see TRAILING_DEFAULTS).
            sa.Column(SOURCE, sa.String(20), nullable=True),
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


def _role_column() -> sa.Column[Any]:
    return sa.Column("role", sa.String(20), primary_key=True, nullable=False, server_default=DEFAULT_ROLE)


def add_roles(conn: sa.Connection) -> bool:
    """Bring a ``predictions`` table made before roles up to date: add ``role`` (default 'champion') and make
    the primary key (request_id, role). Safe to run from several processes at once (the table is locked
    first, then checked again); True when this call changed the table."""
    if not _needs_roles(conn):
        return False
    quote = conn.dialect.identifier_preparer.quote
    table = quote(PREDICTIONS)
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: another process may be migrating too
        if not _needs_roles(conn):
            return False
        old = sa.Table(PREDICTIONS, sa.MetaData(), autoload_with=conn)
        new_name = f"{PREDICTIONS}_with_roles"
        columns = [
            sa.Column(c.name, c.type, nullable=c.nullable, primary_key=c.name == "request_id")
            for c in old.columns
            if c.name != "role"
        ]
        new = sa.Table(new_name, sa.MetaData(), *columns, _role_column())
        new.create(conn)
        names = ", ".join(quote(c.name) for c in columns)
        conn.exec_driver_sql(f"INSERT INTO {quote(new_name)} ({names}) SELECT {names} FROM {table}")
        conn.exec_driver_sql(f"DROP TABLE {table}")
        conn.exec_driver_sql(f"ALTER TABLE {quote(new_name)} RENAME TO {table}")
        conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS ix_{PREDICTIONS}_timestamp ON {table} (timestamp)")
        return True
    conn.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    if not _needs_roles(conn):
        return False
    inspector = sa.inspect(conn)
    if "role" not in {c["name"] for c in inspector.get_columns(PREDICTIONS)}:
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN role VARCHAR(20) NOT NULL DEFAULT '{DEFAULT_ROLE}'")
    pk_name = inspector.get_pk_constraint(PREDICTIONS).get("name")
    if pk_name:
        conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {quote(pk_name)}")
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD PRIMARY KEY (request_id, role)")
    return True


def _needs_roles(conn: sa.Connection) -> bool:
    inspector = sa.inspect(conn)
    if not inspector.has_table(PREDICTIONS):
        return False
    has_role = "role" in {c["name"] for c in inspector.get_columns(PREDICTIONS)}
    key = set(inspector.get_pk_constraint(PREDICTIONS).get("constrained_columns") or [])
    if has_role and key != {"request_id", "role"}:
        # Both changes are made in one transaction, so this `role` is an input column of a contract, logged
        # before the log had roles (it is `role_in` now): not something to reinterpret silently.
        raise ValueError(
            f"the {PREDICTIONS} table has an input column 'role' from before the log had roles; rename it to "
            f"'role_in' (ALTER TABLE {PREDICTIONS} RENAME COLUMN role TO role_in) and restart the service"
        )
    return not has_role


def _only(table: sa.Table, query: sa.Select[Any], roles: tuple[str, ...] | None) -> sa.Select[Any]:
    """`query` limited to rows of `roles` (a table made before roles holds only the champion's rows)."""
    if roles is None or "role" not in table.c:
        return query
    return query.where(table.c.role.in_(roles))


def tables(contract: DatasetContract, metadata: sa.MetaData | None = None) -> tuple[sa.Table, sa.Table]:
    """The two tables of the prediction log for `contract` (see LogSchema)."""
    return LogSchema(contract).tables(metadata)


def ensure_tables(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Create the log's tables if missing and bring an older log up to date (roles, then the ``source``
    column: NULL for the rows already there, which read as online). Both writers (the API's, batch
    scoring's) call this before their first insert; an added nullable column is safe on SQLite and
    PostgreSQL alike."""
    create_tables(engine, metadata.create_all, set(metadata.tables))
    with engine.begin() as conn:
        if add_roles(conn):
            log.info("prediction log: added the role column to %s", PREDICTIONS)
    try:
        with engine.begin() as conn:
            if SOURCE not in _columns(conn):
                quote = conn.dialect.identifier_preparer.quote
                conn.exec_driver_sql(f"ALTER TABLE {quote(PREDICTIONS)} ADD COLUMN {quote(SOURCE)} VARCHAR(20)")
                log.info("prediction log: added the source column to %s", PREDICTIONS)
    except sa.exc.DBAPIError:
        with engine.connect() as conn:
            if SOURCE not in _columns(conn):  # not another worker's ALTER: a real failure
                raise


def _columns(conn: sa.Connection) -> set[str]:
    return {c["name"] for c in sa.inspect(conn).get_columns(PREDICTIONS)}


def _with_source(frame: pd.DataFrame) -> pd.DataFrame:
    """Every row's source, ``online`` where the log predates the column or the API left it unset."""
    frame[SOURCE] = frame[SOURCE].fillna(ONLINE) if SOURCE in frame else ONLINE
    return frame


# ---- readers: pandas + SQLAlchemy only ------------------------------------------------------------


def read_predictions(
    url: str,
    since: datetime | None = None,
    limit: int | None = None,
    *,
    newest: bool = False,
    roles: tuple[str, ...] | None = SERVED_ROLES,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Logged predictions, oldest first; `since` filters on the prediction timestamp (UTC), `until` too
    (inclusive both). By default the rows clients were answered with (champion and canary); ``roles=None``
    adds the shadow rows.

    `limit` keeps the oldest rows, or with `newest=True` the newest ones (still returned oldest first):
    the database does the cut, so a monitoring window never reads the whole log.
    """
    engine = engine_for(url)
    try:
        if not sa.inspect(engine).has_table(PREDICTIONS):
            return pd.DataFrame(columns=list(_META))  # nothing logged yet
        table = sa.Table(PREDICTIONS, sa.MetaData(), autoload_with=engine)
        query = _only(table, sa.select(table), roles)
        query = query.order_by(table.c.timestamp.desc() if newest else table.c.timestamp)
        if since is not None:
            query = query.where(table.c.timestamp >= since)
        if until is not None:
            query = query.where(table.c.timestamp <= until)
        if limit is not None:
            query = query.limit(limit)
        with engine.connect() as conn:
            frame = _with_source(pd.read_sql(query, conn))
        return frame.iloc[::-1].reset_index(drop=True) if newest else frame
    finally:
        engine.dispose()


def read_prediction_times(
    url: str,
    since: datetime | None = None,
    limit: int | None = None,
    *,
    roles: tuple[str, ...] | None = SERVED_ROLES,
) -> list[datetime]:
    """The timestamps of the rows ``read_predictions(url, since, limit, newest=True, roles=roles)`` returns,
    oldest first, and nothing else: a window's bounds, to read it in slices."""
    engine = engine_for(url)
    try:
        if not sa.inspect(engine).has_table(PREDICTIONS):
            return []
        table = sa.Table(PREDICTIONS, sa.MetaData(), autoload_with=engine)
        query = _only(table, sa.select(table.c.timestamp), roles).order_by(table.c.timestamp.desc())
        if since is not None:
            query = query.where(table.c.timestamp >= since)
        if limit is not None:
            query = query.limit(limit)
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(query)][::-1]
    finally:
        engine.dispose()


def read_prediction(url: str, request_id: str) -> pd.DataFrame:
    """The answer logged with this request id (not its shadow): zero or one row (GET /explain reads its inputs
    back)."""
    engine = engine_for(url)
    try:
        if not sa.inspect(engine).has_table(PREDICTIONS):
            return pd.DataFrame(columns=list(_META))
        table = sa.Table(PREDICTIONS, sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            query = _only(table, sa.select(table).where(table.c.request_id == request_id), SERVED_ROLES)
            return _with_source(pd.read_sql(query, conn))
    finally:
        engine.dispose()


def read_feedback(
    url: str, since: datetime | None = None, *, of_predictions: tuple[datetime, datetime] | None = None
) -> pd.DataFrame:
    """Every label received (since `since`, on the time it was received), the latest per request id last.

    `of_predictions` (first, last): only the labels of requests predicted between those times (inclusive),
    so that a slice of a window reads its own labels, not every label received since it began."""
    engine = engine_for(url)
    try:
        inspector = sa.inspect(engine)
        if not inspector.has_table(FEEDBACK):
            return pd.DataFrame(columns=["request_id", "label", "received_at"])
        table = sa.Table(FEEDBACK, sa.MetaData(), autoload_with=engine)
        query = sa.select(table.c.request_id, table.c.label, table.c.received_at).order_by(table.c.received_at)
        if since is not None:
            query = query.where(table.c.received_at >= since)
        if of_predictions is not None and inspector.has_table(PREDICTIONS):
            predictions = sa.Table(PREDICTIONS, sa.MetaData(), autoload_with=engine)
            first, last = of_predictions
            predicted = sa.select(predictions.c.request_id).where(
                predictions.c.timestamp >= first, predictions.c.timestamp <= last
            )
            query = query.where(table.c.request_id.in_(predicted))
        with engine.connect() as conn:
            return pd.read_sql(query, conn)
    finally:
        engine.dispose()
