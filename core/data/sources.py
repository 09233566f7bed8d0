"""Chunked readers for the configured source: a SQL table or query, or CSV / Parquet files.

All of them answer the same three questions for collection: which columns does the source have,
what is its newest timestamp (its clock), and which rows fall in a window
``(watermark, until]`` ordered by (timestamp, id). A contract without a timestamp has no window:
``read(None, ...)`` returns every row. Rows arrive in chunks of at most ``chunk_rows`` and keep their
raw values (strings stay strings): typing is the checker's job, so that a wrong type becomes a
quarantined row with a reason instead of a crashed read.

Rows are read as Arrow columns: SQLite and PostgreSQL through ADBC (no Python object per value),
Parquet through pyarrow datasets; other SQL dialects and CSV through pandas, converted once per chunk.
SQLite stores whatever it is given: when a column holds values of two types (text in a FLOAT column),
ADBC refuses the batch and the read continues from that row through SQLite's own driver, which returns
the values as they are, for the checker to type and quarantine. Chunks hold exactly ``chunk_rows``
rows of the ordered read (before the window's fine filter), so the same source gives the same chunks
and the same part files in every run.

The watermark tie-break on the id column is applied in Python's string order, not SQL, so that string collation
differences between databases cannot skip or repeat rows. Without an id column the window starts *at*
the watermark's time, so rows that share the newest time of the last run are read again rather than
missed; the row keys collection derives make the second copy a duplicate that preprocessing drops.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import logging
import re
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import sqlalchemy as sa

from core.contract import DatasetContract
from core.data.rules import arrow_from_pandas, timestamps_of, to_timestamps
from core.databases import engine_for, libpq_url, sqlite_path, sqlite_time
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watermark:
    """The last (timestamp, id) collected; None before the first successful run."""

    timestamp: datetime | None = None
    id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"timestamp": self.timestamp.isoformat() if self.timestamp else None, "id": self.id}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Watermark:
        ts = raw.get("timestamp")
        return cls(timestamp=datetime.fromisoformat(ts) if ts else None, id=raw.get("id"))


@dataclass(frozen=True)
class Window:
    """Rows with (ts, id) > since and ts <= until."""

    since: Watermark
    until: datetime


class SourceError(RuntimeError):
    """The source cannot be read as configured."""


class CannotSplitError(SourceError):
    """The read cannot be cut into parts that are read on their own (the message says why): it is read by one
    query or stream."""


class SourceChangedError(SourceError):
    """A chunk of a read in parts held other rows than planned: the source changed while it was read."""


@dataclass(frozen=True)
class SourcePart:
    """One chunk of a window's ordered read, named so that another process can read it on its own.

    ``index`` is the chunk's place in the read; a SQL source names it by a time range of the window and its
    rows' positions there in the read's order (``ranges``: (range, offset, rows), read in one query), a
    Parquet source by row ranges of the files as they were listed when planned (``files``: (path, start,
    stop) each, read under the schema of ``schema_file``, the first file). ``rows`` is how many rows the
    ordered read holds there (before the window's fine filter). ``edges`` (SQL): for each day the chunk runs past,
    the day's end and how many of the chunk's rows come before it, as the days' counts placed them.
    """

    index: int
    rows: int
    ranges: tuple[tuple[TimeRange, int, int], ...] = ()
    files: tuple[tuple[str, int, int], ...] = ()
    schema_file: str = ""
    edges: tuple[tuple[datetime, int], ...] = ()


@dataclass(frozen=True)
class TimeRange:
    """Rows whose timestamp is >= ``start`` and < ``end`` (None: open), compared as the source stores times."""

    start: datetime | None
    end: datetime | None


def plan_parts(ranges: list[TimeRange], counts: Iterable[int], chunk_rows: int) -> Iterator[SourcePart]:
    """The read's chunks of ``chunk_rows`` rows, given the consecutive ranges' row counts: each chunk is the
    rows from an offset in the first range it touches, through the last one (one query, one type inference
    over the chunk's rows, as the local read's).

    ``counts`` may arrive one by one (a thread pool counting the days): a chunk is yielded as soon as the counts
    of the ranges it spans are known, so that its read starts while later days are still being counted."""
    firsts = [0]  # the read's position of each counted range's first row, and the rows counted so far
    start, index = 0, 0

    def part(stop: int) -> SourcePart:
        a = bisect.bisect_right(firsts, start) - 1  # the range holding row `start`
        b = bisect.bisect_left(firsts, stop) - 1  # the range holding row `stop - 1`
        span = TimeRange(ranges[a].start, ranges[b].end)
        edges = tuple((end, firsts[r + 1] - start) for r in range(a, b) if (end := ranges[r].end) is not None)
        return SourcePart(
            index=index, rows=stop - start, ranges=((span, start - firsts[a], stop - start),), edges=edges
        )

    for count in counts:
        firsts.append(firsts[-1] + count)
        while start + chunk_rows <= firsts[-1]:  # every range up to this chunk's last row is counted
            yield part(start + chunk_rows)
            start, index = start + chunk_rows, index + 1
    if start < firsts[-1]:
        yield part(firsts[-1])


@dataclass
class PartRead:
    """What a part's read gave: how many rows of the ordered read it held, and those inside the window."""

    read: int
    tables: list[pa.Table]


RangeCounter = Callable[[list[TimeRange]], list[int]]
"""Counts the window's rows in each time range (in this process, or one task a range on a cluster)."""


def _select_window_arrow(table: pa.Table, window: Window | None, contract: DatasetContract) -> pa.Table:
    """The rows of ``table`` inside the window (rows whose timestamp is unusable are left out)."""
    if window is None or contract.timestamp_column is None or not table.num_rows:
        return table
    ts = timestamps_of(table.column(contract.timestamp_column))
    keep = ~np.isnat(ts) & (ts <= _ns(window.until))
    since = window.since
    if since.timestamp is not None:
        wm = _ns(since.timestamp)
        if contract.id_column is None:
            keep &= ts >= wm
        else:
            tie = np.flatnonzero(keep & (ts == wm))
            keep &= ts > wm
            if tie.size:  # the id decides, in Python's string order, for the rows at the watermark's time
                ids = table.column(contract.id_column).take(pa.array(tie)).to_pandas().astype(str)
                keep[tie[(ids > (since.id or "")).to_numpy()]] = True
    if keep.all():  # the usual case: no copy
        return table
    return table.filter(pa.array(keep))


def _ns(moment: datetime) -> np.datetime64:
    return np.datetime64(pd.Timestamp(moment).value, "ns")


def _rechunk(pieces: Iterable[pa.Table | pa.RecordBatch], chunk_rows: int) -> Iterator[pa.Table]:
    """Exactly ``chunk_rows`` rows per chunk (the last one fewer), whatever sizes the reader returns."""
    pending: list[pa.Table] = []
    held = 0
    for piece in pieces:
        if not piece.num_rows:
            continue
        table = pa.Table.from_batches([piece]) if isinstance(piece, pa.RecordBatch) else piece
        pending.append(table)
        held += table.num_rows
        while held >= chunk_rows:
            whole = _concat(pending)
            yield whole.slice(0, chunk_rows).combine_chunks()
            rest = whole.slice(chunk_rows)
            pending, held = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if held:
        yield _concat(pending).combine_chunks()


def _concat(tables: list[pa.Table]) -> pa.Table:
    """One table; a column whose pieces disagree on type (SQLite: a batch where text met numbers, typed as
    text, beside a batch of numbers) becomes text, for the checker to type value by value."""
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        names = tables[0].column_names
        mixed = {n for n in names if len({t.schema.field(n).type for t in tables}) > 1}
        return pa.concat_tables(
            [
                t.select(names).cast(
                    pa.schema([(n, pa.string() if n in mixed else t.schema.field(n).type) for n in names])
                )
                for t in tables
            ],
            promote_options="permissive",
        )


def frame_to_arrow(frame: pd.DataFrame) -> pa.Table:
    """A raw pandas chunk as Arrow, column by column; a mixed object column becomes text (the checker types it)."""
    return pa.Table.from_arrays([arrow_from_pandas(frame[c]) for c in frame.columns], names=[str(c) for c in frame])


def _select_window(frame: pd.DataFrame, window: Window | None, contract: DatasetContract) -> tuple[pd.DataFrame, int]:
    """(rows of ``frame`` inside the window, rows whose timestamp is unusable)."""
    if window is None or contract.timestamp_column is None:
        return frame, 0
    ts = to_timestamps(frame[contract.timestamp_column])
    unusable = ts.isna()
    keep = ~unusable & (ts <= window.until)
    since = window.since
    if since.timestamp is not None:
        wm = pd.Timestamp(since.timestamp)
        if contract.id_column is None:
            keep &= ts >= wm
        else:
            ids = frame[contract.id_column].astype(str)
            keep &= (ts > wm) | ((ts == wm) & (ids > (since.id or "")))
    if keep.all():  # the usual case: skip a copy of the whole chunk
        return frame, int(unusable.sum())
    return frame.loc[keep.to_numpy()].reset_index(drop=True), int(unusable.sum())


# ---- SQL ----------------------------------------------------------------------------------------
class SqlSource:
    """A table or a query against any SQLAlchemy URL, read with a server-side cursor where supported."""

    def __init__(
        self,
        url: str,
        contract: DatasetContract,
        *,
        table: str | None = None,
        query: str | None = None,
        rename: Mapping[str, str] | None = None,
        readers: int = 1,
    ):
        if not table and not query:
            raise SourceError("a sql source needs source.table or source.query")
        self.url = url
        self.readers = readers
        self.contract = contract
        self.rename = Renamer(rename)
        self.engine = engine_for(url)
        prep = self.engine.dialect.identifier_preparer
        self._from = f"({query.strip().rstrip(';')}) AS src" if query else prep.quote(table or "")
        # SQL names the source's own columns: a renamed timestamp or id is queried by its source name.
        ts, key = (self.rename.source(c) if c else None for c in (contract.timestamp_column, contract.id_column))
        self._ts = prep.quote(ts) if ts else None
        self._order = ", ".join(prep.quote(c) for c in (ts, key) if c)
        self.description = f"sql {self.engine.url.render_as_string(hide_password=True)} " + (
            "query" if query else f"table {table}"
        )

    def close(self) -> None:
        self.engine.dispose()

    def columns(self) -> list[str]:
        with self.engine.connect() as conn:
            return self.rename.names(conn.execute(sa.text(f"SELECT * FROM {self._from} WHERE 1 = 0")).keys())

    @property
    def _unusable(self) -> str:
        """SQL predicate: the row's timestamp is NULL, or (SQLite stores what it is given) not a time."""
        if self._ts is None:
            return "1 = 0"
        if self.engine.dialect.name == "sqlite":
            return f"({self._ts} IS NULL OR datetime({self._ts}) IS NULL)"
        return f"({self._ts} IS NULL)"  # a typed timestamp column holds nothing but times or NULL

    def clock(self) -> datetime | None:
        if self._ts is None:
            return None
        with self.engine.connect() as conn:
            newest = conn.execute(
                sa.text(f"SELECT MAX({self._ts}) FROM {self._from} WHERE NOT {self._unusable}")
            ).scalar()
        if newest is None:
            return None
        ts = to_timestamps(pd.Series([newest]))[0]
        if pd.isna(ts):
            raise SourceError(
                f"the newest {self.contract.timestamp_column} in {self.description} is not a timestamp: {newest!r}"
            )
        return pd.Timestamp(ts).to_pydatetime()

    def counted_unusable(self) -> int | None:
        """:meth:`unusable_timestamps` when known without another read: never here (it is a query of its own)."""
        return None

    def unusable_timestamps(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {self._from} WHERE {self._unusable}")).scalar() or 0)

    def unusable_rows(self) -> pd.DataFrame:
        """Rows no window can hold (few, by nature): collection quarantines them instead of losing them."""
        with self.engine.connect() as conn:
            return self.rename.frame(pd.read_sql(sa.text(f"SELECT * FROM {self._from} WHERE {self._unusable}"), conn))

    def read(self, window: Window | None, chunk_rows: int) -> Iterator[pd.DataFrame]:
        for table in self.read_arrow(window, chunk_rows):
            yield table.to_pandas()

    def read_arrow(self, window: Window | None, chunk_rows: int) -> Iterator[pa.Table]:
        """The window's rows as Arrow tables of raw values under the contract's names: with ``readers`` above
        one, read in parts by that many connections at once where the read can be cut (:meth:`parts`), else by
        one query."""
        if self.readers > 1 and window is not None:
            try:
                ranges = self._ranges_to_cut(window)
            except CannotSplitError as exc:
                log.info("%s: read by one query, not in parts: %s", self.description, exc)
            else:
                yield from self._read_in_parts(window, self._parts_as_counted(window, ranges, chunk_rows))
                return
        sql, bounds = self._window_sql(window)
        if window is not None and self._ts is not None:
            sql += f" ORDER BY {self._order}"
        for chunk in self._chunks(sql, bounds, chunk_rows):
            rows = _select_window_arrow(self.rename.table(chunk), window, self.contract)
            if rows.num_rows:
                yield rows

    def _window_sql(self, window: Window | None, select: str = "*") -> tuple[str, dict[str, datetime]]:
        """The window's coarse read (the fine filter on the watermark's id is applied to the rows read)."""
        bounds: dict[str, datetime] = {}
        sql = f"SELECT {select} FROM {self._from}"
        if window is not None and self._ts is not None:
            bounds["until"] = window.until
            if window.since.timestamp is not None:
                bounds["since"] = window.since.timestamp
            where = " AND ".join(
                f"{self._ts} {op} :{name}" for name, op in (("until", "<="), ("since", ">=")) if name in bounds
            )
            sql += f" WHERE {where}"
        return sql, bounds

    def parts(self, window: Window | None, chunk_rows: int, counter: RangeCounter | None = None) -> list[SourcePart]:
        """The chunks :meth:`read_arrow` reads, each named so that another connection or process reads it on its
        own (:meth:`read_part`): the window cut into days (:meth:`time_ranges`), each day's rows counted by
        ``counter`` (default: this source's ``readers`` connections at once) and the chunks placed by the counts
        (:func:`plan_parts`).

        CannotSplitError says why the read cannot be cut: no timestamp and id to order it (rows tied on both would be
        placed by each query as it likes), a database without LIMIT and OFFSET or private to one connection (an
        in-memory SQLite), or a slow part query (:meth:`why_not_in_parts`).
        """
        ranges = self._ranges_to_cut(window)
        assert window is not None  # _ranges_to_cut refuses a read without a window
        if counter is None:
            return list(self._parts_as_counted(window, ranges, chunk_rows))
        return list(plan_parts(ranges, counter(ranges), chunk_rows))

    def _ranges_to_cut(self, window: Window | None) -> list[TimeRange]:
        """The days the read is cut by, or CannotSplitError (:meth:`parts`)."""
        dialect = self.engine.dialect.name
        if self.contract.id_column is None:
            raise CannotSplitError("the contract has no id_column to order the read's rows within a timestamp")
        if dialect == "sqlite" and sqlite_path(str(self.engine.url)) is None:
            raise CannotSplitError("an in-memory SQLite database is private to one connection")
        ranges = self.time_ranges(window)
        if ranges and window is not None:
            why_not = self.why_not_in_parts(window, ranges)
            if why_not is not None:
                raise CannotSplitError(why_not)
        return ranges

    def _parts_as_counted(self, window: Window, ranges: list[TimeRange], chunk_rows: int) -> Iterator[SourcePart]:
        """The parts, each as soon as the days it spans are counted (``readers`` connections count at once)."""
        with ThreadPoolExecutor(max_workers=self.readers, thread_name_prefix="sql-counter") as pool:
            yield from plan_parts(ranges, pool.map(functools.partial(self.count, window), ranges), chunk_rows)

    def why_not_in_parts(self, window: Window, ranges: list[TimeRange]) -> str | None:
        """Why a part's query would be slow, or None: the database must read a day of the window in (timestamp,
        id) order from an index, so that a part's LIMIT/OFFSET query stops after its rows. Without one, each part
        would scan and sort the day (and each day's count scan the table); the window is then read by one query.
        Asked of the database's plan for the middle day's part (EXPLAIN)."""
        sql, bounds = self._range_sql(window, ranges[len(ranges) // 2])
        sql += f" ORDER BY {self._order} LIMIT 1 OFFSET 0"
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                plan = [str(row[-1]) for row in conn.execute(_bound(f"EXPLAIN QUERY PLAN {sql}", bounds))]
                sorting = [step for step in plan if "TEMP B-TREE" in step]
            else:
                [tree] = conn.execute(_bound(f"EXPLAIN (FORMAT JSON) {sql}", bounds)).scalar_one()
                sorting = [n for n in _plan_nodes(tree["Plan"]) if "Sort" in n]
        if sorting:
            return f"no index on ({self._order}) serves the read's order (the plan: {', '.join(sorting)})"
        return None

    def _read_in_parts(self, window: Window, parts: Iterable[SourcePart]) -> Iterator[pa.Table]:
        """The parts' chunks, ``readers`` of them read at once, each by its own query and connection, yielded in
        the read's order: the same chunks as one query's. SQLite and PostgreSQL release the GIL while they read,
        so two readers read about twice as fast as one.

        One query reads a snapshot; parts are read one after another. A part that held other rows than its days'
        counts said raises SourceChangedError (rows arrived or went in the window while it was read).
        """
        pending = iter(parts)
        with ThreadPoolExecutor(max_workers=self.readers, thread_name_prefix="sql-reader") as pool:
            ahead = deque(pool.submit(self.read_part, window, p) for p in itertools.islice(pending, self.readers))
            try:
                while ahead:
                    read = ahead.popleft().result()
                    following = next(pending, None)
                    if following is not None:
                        ahead.append(pool.submit(self.read_part, window, following))
                    if read.tables:
                        yield _concat(read.tables).combine_chunks()
            finally:
                for reading in ahead:
                    reading.cancel()
                if isinstance(parts, Generator):  # the days still being counted: stopped, not left to the GC
                    parts.close()

    def time_ranges(self, window: Window | None) -> list[TimeRange]:
        """The window cut into calendar days between its oldest and newest timestamps (one query on the
        timestamp's index), the first and last open, so every row of the window's read is in one range.

        The parts of the read are placed by the ranges' row counts (:meth:`parts`). Needs a timestamp (the read's
        order) and a database with LIMIT and OFFSET (SQLite, PostgreSQL); otherwise CannotSplitError.
        """
        if window is None or self._ts is None:
            raise CannotSplitError("a sql source is split into parts by time: the contract has no timestamp_column")
        if self.engine.dialect.name not in ("sqlite", "postgresql"):
            raise CannotSplitError(
                f"a {self.engine.dialect.name} source is not split into parts (SQLite, PostgreSQL are)"
            )
        sql, bounds = self._window_sql(window, select=f"MIN({self._ts}), MAX({self._ts})")
        with self.engine.connect() as conn:
            oldest, newest = conn.execute(_bound(sql, bounds)).one()
        if oldest is None:
            return []
        first, last = to_timestamps(pd.Series([oldest, newest])).dt.normalize()
        if pd.isna(first) or pd.isna(last):  # SQLite holds what it is given: text that is not a time
            raise CannotSplitError(
                f"the window's oldest or newest {self.contract.timestamp_column} is not a time ({oldest!r}, "
                f"{newest!r}): the window cannot be cut into days"
            )
        days = [d.to_pydatetime() for d in pd.date_range(first + pd.Timedelta(days=1), last, freq="D")]
        edges: list[datetime | None] = [None, *days, None]
        return [TimeRange(a, b) for a, b in itertools.pairwise(edges)]

    def count(self, window: Window | None, time_range: TimeRange) -> int:
        """Rows of the window's read in ``time_range``."""
        sql, bounds = self._range_sql(window, time_range, select="COUNT(*)")
        with self.engine.connect() as conn:
            return int(conn.execute(_bound(sql, bounds)).scalar() or 0)

    def _range_sql(
        self, window: Window | None, time_range: TimeRange, select: str = "*"
    ) -> tuple[str, dict[str, datetime]]:
        """The window's read within ``time_range``: one lower and one upper bound on the timestamp, the tighter of
        the window's and the range's. Given both upper bounds, SQLite's planner took the window's for the index
        range and scanned from the day's start to the table's end (a day's count: 1-2 s instead of 20 ms at 10M
        rows)."""
        sql, bounds = self._window_sql(None, select=select)
        since = window.since.timestamp if window is not None else None
        until = window.until if window is not None else None
        where = []
        lower = max((edge for edge in (since, time_range.start) if edge is not None), default=None)
        if lower is not None:
            bounds["lo_ts"] = lower
            where.append(f"{self._ts} >= :lo_ts")
        if time_range.end is not None and (until is None or time_range.end <= until):
            bounds["hi_ts"] = time_range.end
            where.append(f"{self._ts} < :hi_ts")
        elif until is not None:
            bounds["until"] = until
            where.append(f"{self._ts} <= :until")
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql, bounds

    def read_part(self, window: Window | None, part: SourcePart) -> PartRead:
        """One part of the read, read on its own: its rows of each time range, by position in the read's order."""
        read, tables = 0, []
        ts = self.contract.timestamp_column
        before = [0] * len(part.edges)  # rows read before each day's end
        for time_range, offset, rows in part.ranges:
            sql, bounds = self._range_sql(window, time_range)
            sql += f" ORDER BY {self._order} LIMIT {int(rows)} OFFSET {int(offset)}"
            for chunk in self._chunks(sql, bounds, max(rows, 1)):
                named = self.rename.table(chunk)
                if part.edges and ts is not None:
                    stamps = timestamps_of(named.column(ts))
                    for i, (end, _) in enumerate(part.edges):
                        before[i] += int((stamps < _ns(end)).sum())
                read += chunk.num_rows
                inside = _select_window_arrow(named, window, self.contract)
                if inside.num_rows:
                    tables.append(inside)
        if read != part.rows or before != [planned for _, planned in part.edges]:
            raise SourceChangedError(
                f"{self.description}: part {part.index} of the read held other rows than its days' counts placed "
                f"there ({read} rows, planned {part.rows}; before each day's end {before}, planned "
                f"{[planned for _, planned in part.edges]}): the source changed while it was read"
            )
        return PartRead(read, tables)

    def _chunks(self, sql: str, bounds: dict[str, datetime], chunk_rows: int) -> Iterator[pa.Table]:
        dialect = self.engine.dialect.name
        if dialect == "sqlite" and sqlite_path(str(self.engine.url)) is not None:
            done = 0
            try:
                for chunk in _rechunk(self._read_adbc_sqlite(sql, bounds), chunk_rows):
                    yield chunk
                    done += chunk.num_rows
                return
            except OSError as exc:  # adbc's "Type mismatch in column": SQLite holds mixed types
                if "mismatch" not in str(exc).lower():
                    raise
                log.info("%s: %s; reading on from row %d through SQLite's driver", self.description, exc, done)
            # From the first row not yet returned, through the driver that reads values as they are.
            skipped = 0
            for frame in self._read_sqlite(sql, bounds, chunk_rows):
                if skipped + len(frame) <= done:
                    skipped += len(frame)
                    continue
                yield frame_to_arrow(frame.iloc[max(0, done - skipped) :].reset_index(drop=True))
                skipped += len(frame)
            return
        if dialect == "postgresql":
            yield from _rechunk(self._read_adbc_postgresql(sql, bounds), chunk_rows)
            return
        for frame in self._read_sqlalchemy(sql, bounds, chunk_rows):
            yield frame_to_arrow(frame)

    def _read_adbc_sqlite(self, sql: str, bounds: dict[str, datetime]) -> Iterator[pa.RecordBatch]:
        import adbc_driver_sqlite.dbapi as adbc_sqlite

        path = sqlite_path(str(self.engine.url))
        params = [sqlite_time(bounds[k]) for k in _bound_names(sql)]
        with adbc_sqlite.connect(str(path)) as conn, conn.cursor() as cur:
            cur.execute("PRAGMA busy_timeout = 5000")  # wait for a writer's lock, as the engine's connections do
            cur.fetchall()
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(_ADBC_BATCH_ROWS)})
            cur.execute(_positional(sql, "?"), params or None)
            yield from cur.fetch_record_batch()

    def _read_adbc_postgresql(self, sql: str, bounds: dict[str, datetime]) -> Iterator[pa.RecordBatch]:
        import adbc_driver_postgresql.dbapi as adbc_pg

        params = [bounds[k] for k in _bound_names(sql)]
        with adbc_pg.connect(libpq_url(self.engine.url)) as conn, conn.cursor() as cur:
            cur.execute(_positional(sql, "$"), params or None)
            yield from cur.fetch_record_batch()

    def _read_sqlalchemy(self, sql: str, bounds: dict[str, datetime], chunk_rows: int) -> Iterator[pd.DataFrame]:
        query = _bound(sql, bounds)
        # stream_results: a server-side cursor on PostgreSQL, so 10M rows never sit in client memory.
        with self.engine.connect().execution_options(stream_results=True, max_row_buffer=chunk_rows) as conn:
            yield from pd.read_sql(query, conn, params=bounds, chunksize=chunk_rows)

    def _read_sqlite(self, sql: str, bounds: dict[str, datetime], chunk_rows: int) -> Iterator[pd.DataFrame]:
        """SQLite through its own driver: ~30% faster than SQLAlchemy's row objects at 10M rows.

        Bounds are rendered in SQLAlchemy's SQLite DATETIME format, the one the warehouse stores.
        """
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            params = {k: sqlite_time(v) for k, v in bounds.items()}
            yield from pd.read_sql(sql, driver, params=params, chunksize=chunk_rows)  # type: ignore[arg-type]
        finally:
            raw.close()


def _plan_nodes(node: dict[str, Any]) -> Iterator[str]:
    """The node types of a PostgreSQL plan (EXPLAIN's JSON), depth first."""
    yield str(node.get("Node Type", ""))
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


_ADBC_BATCH_ROWS = 65_536
_WINDOW_BOUNDS = ("since", "until", "lo_ts", "hi_ts")
_BIND = re.compile(r":(since|until|lo_ts|hi_ts)\b")


def _bound(sql: str, bounds: dict[str, datetime]) -> sa.TextClause:
    """``sql`` with its times bound as DateTime (rendered as the dialect stores them: SQLite's text)."""
    return sa.text(sql).bindparams(*(sa.bindparam(k, v, type_=sa.DateTime()) for k, v in bounds.items()))


def _bound_names(sql: str) -> list[str]:
    return _BIND.findall(sql)


def _positional(sql: str, style: str) -> str:
    """``:since`` / ``:until`` as ``?`` (SQLite) or ``$1, $2`` (PostgreSQL), in order of appearance."""
    if style == "?":
        return _BIND.sub("?", sql)
    counter = iter(range(1, 100))
    return _BIND.sub(lambda _: f"${next(counter)}", sql)


# ---- files --------------------------------------------------------------------------------------
_GLOB = re.compile(r"[*?\[]")


class FileSource:
    """CSV or Parquet files: one path, a glob or a directory, local or any fsspec URL."""

    def __init__(
        self,
        path: str,
        kind: str,
        contract: DatasetContract,
        *,
        encoding: str = "utf-8",
        rename: Mapping[str, str] | None = None,
    ):
        self.kind = kind
        self.contract = contract
        self.encoding = encoding
        self.rename = Renamer(rename)
        self.fs, root = fsspec.core.url_to_fs(path)
        suffixes = (".csv", ".csv.gz") if kind == "csv" else (".parquet", ".pq")
        if _GLOB.search(root):
            files = self.fs.glob(root)
        elif self.fs.isdir(root):
            files = [f for f in self.fs.find(root) if f.endswith(suffixes)]
        else:
            files = [root] if self.fs.exists(root) else []
        if not files:
            raise SourceError(f"no {kind} files at {path}")
        self.files = sorted(files)
        self.description = f"{kind} {path} ({len(self.files)} file(s))"

    def close(self) -> None:
        return None

    def _chunks(self, chunk_rows: int, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """Chunks under the contract's column names; `columns` names contract columns to read."""
        wanted = [self.rename.source(c) for c in columns] if columns is not None else None
        for f in self.files:
            with self.fs.open(f, "rb") as fh, self._decoding(f):
                if self.kind == "csv":
                    # Everything as text: the checker types each value and quarantines what does not fit.
                    for chunk in self._read_csv(f, fh, dtype=str, chunksize=chunk_rows, usecols=wanted):
                        yield self.rename.frame(chunk)
                else:
                    for batch in pq.ParquetFile(fh).iter_batches(batch_size=chunk_rows, columns=wanted):
                        yield self.rename.frame(batch.to_pandas())

    @contextlib.contextmanager
    def _decoding(self, path: str) -> Iterator[None]:
        """A file that is not text in the configured encoding: an error naming the file and the byte."""
        try:
            yield
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"{path}: not {self.encoding} text (undecodable bytes {exc.object[exc.start : exc.end + 3]!r}); "
                "set source.encoding to the files' encoding (for example latin-1)"
            ) from None

    def columns(self) -> list[str]:
        with self.fs.open(self.files[0], "rb") as fh, self._decoding(self.files[0]):
            if self.kind == "csv":
                return self.rename.names(self._read_csv(self.files[0], fh, nrows=0).columns)
            return self.rename.names(pq.ParquetFile(fh).schema_arrow.names)

    def _read_csv(self, path: str, fh: Any, **kwargs: Any) -> Any:
        compression: Literal["gzip"] | None = "gzip" if path.endswith(".gz") else None
        return pd.read_csv(fh, compression=compression, encoding=self.encoding, **kwargs)

    @functools.cached_property
    def _timestamp_scan(self) -> tuple[pd.Timestamp | None, int]:
        """(newest usable timestamp, rows whose timestamp is unusable): one pass over the timestamp column,
        shared by a run's clock and counts."""
        newest: pd.Timestamp | None = None
        unusable = 0
        column = self.contract.timestamp_column
        if column is None:
            return None, 0
        for chunk in self._chunks(1_000_000, [column]):
            ts = to_timestamps(chunk[column])
            unusable += int(ts.isna().sum())
            top = ts.max()
            if pd.notna(top) and (newest is None or top > newest):
                newest = top
        return newest, unusable

    def clock(self) -> datetime | None:
        newest = self._timestamp_scan[0]
        return None if newest is None else pd.Timestamp(newest).to_pydatetime()

    def counted_unusable(self) -> int | None:
        """:meth:`unusable_timestamps` when known without another read: once the clock's scan of the timestamp
        column ran (it counts them too)."""
        scan = self.__dict__.get("_timestamp_scan")  # where functools.cached_property keeps the scan's result
        return None if scan is None else int(scan[1])

    def unusable_timestamps(self) -> int:
        return self._timestamp_scan[1]

    def unusable_rows(self) -> pd.DataFrame:
        """Rows no window can hold: collection quarantines them instead of losing them (it asks only when it
        counted some: one pass over every column)."""
        column = self.contract.timestamp_column
        if column is None:
            return pd.DataFrame(columns=self.columns())
        parts = [c[to_timestamps(c[column]).isna().to_numpy()] for c in self._chunks(250_000)]
        parts = [p for p in parts if len(p)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=self.columns())

    def read(self, window: Window | None, chunk_rows: int) -> Iterator[pd.DataFrame]:
        for table in self.read_arrow(window, chunk_rows):
            yield table.to_pandas()

    def read_arrow(self, window: Window | None, chunk_rows: int) -> Iterator[pa.Table]:
        """The window's rows as Arrow tables of raw values (CSV: every value as text) under the contract's names."""
        if self.kind == "csv":
            chunks: Iterable[pa.Table] = (frame_to_arrow(c) for c in self._chunks(chunk_rows))
        else:
            chunks = (self.rename.table(c) for c in _rechunk(self._parquet_batches(chunk_rows), chunk_rows))
        for chunk in chunks:
            rows = _select_window_arrow(chunk, window, self.contract)
            if rows.num_rows:
                yield rows

    def parts(self, window: Window | None, chunk_rows: int) -> list[SourcePart]:
        """The chunks :meth:`read_arrow` would read, as row ranges of the files listed now (from the files'
        footers, no rows read). CSV files cannot be split without reading them: CannotSplitError."""
        if self.kind != "parquet":
            raise CannotSplitError(
                f"a {self.kind} source is not split into parts: its row positions are unknown unread"
            )
        sizes = []
        for path in self.files:
            with pq.ParquetFile(path, filesystem=self.fs) as pf:
                sizes.append(pf.metadata.num_rows)
        total = sum(sizes)
        parts = []
        for index, start in enumerate(range(0, total, chunk_rows)):
            stop, offset, files = min(start + chunk_rows, total), 0, []
            for path, rows in zip(self.files, sizes, strict=True):
                lo, hi = max(start, offset), min(stop, offset + rows)
                if lo < hi:
                    files.append((path, lo - offset, hi - offset))
                offset += rows
            parts.append(SourcePart(index=index, rows=stop - start, files=tuple(files), schema_file=self.files[0]))
        return parts

    def read_part(self, window: Window | None, part: SourcePart) -> PartRead:
        """One part of :meth:`parts`, read on its own: the row groups holding its rows, sliced."""
        schema = pq.read_schema(part.schema_file, filesystem=self.fs)
        pieces = [
            self._file_rows_slice(path, part.schema_file, schema, start, stop) for path, start, stop in part.files
        ]
        read = sum(t.num_rows for t in pieces)
        if read != part.rows:
            raise SourceChangedError(
                f"{self.description}: part {part.index} of the read held {read} rows, planned {part.rows}: the "
                "files changed while they were read"
            )
        if not pieces:
            return PartRead(0, [])
        chunk = self.rename.table(_concat(pieces).combine_chunks())
        rows = _select_window_arrow(chunk, window, self.contract)
        return PartRead(read, [rows] if rows.num_rows else [])

    def _file_rows_slice(self, path: str, first: str, schema: pa.Schema, start: int, stop: int) -> pa.Table:
        """Rows [start, stop) of one file, read as :meth:`_parquet_batches` reads it."""
        with pq.ParquetFile(path, filesystem=self.fs) as pf:
            if pf.schema_arrow.equals(schema):
                groups: list[int] = []
                group_start: int | None = None
                at = 0
                for g in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(g).num_rows
                    if at < stop and at + n > start:
                        groups.append(g)
                        group_start = at if group_start is None else group_start
                    at += n
                table = pf.read_row_groups(groups)
                return table.slice(start - (group_start or 0), stop - start)
        one = pads.dataset(path, schema=schema, format="parquet", filesystem=self.fs)
        try:
            return one.to_table().slice(start, stop - start)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            columns = ", ".join(f"{f.name} {f.type}" for f in schema)
            raise SourceError(
                f"{path}: its columns do not read as the first file's ({first}: {columns}): {exc}"
            ) from exc

    def _parquet_batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """The files' rows, one file at a time, under the first file's schema (as a dataset unifies them).

        Not one ``pyarrow.dataset`` scan over every file: its scanner read ahead of a consumer slower than
        the disk without bound (2 GB of resident memory over 20M rows here, growing with the rows), where
        one file at a time holds one file's batches (under 300 MB) and reads faster.
        """
        schema = pq.read_schema(self.files[0], filesystem=self.fs)  # what a dataset over the files infers
        for path in self.files:
            with pq.ParquetFile(path, filesystem=self.fs) as pf:
                if pf.schema_arrow.equals(schema):
                    yield from pf.iter_batches(batch_size=chunk_rows)
                    continue
            # A file whose columns differ (order, a missing column, another type): the dataset's reading
            # of it against the unified schema, as before.
            one = pads.dataset(path, schema=schema, format="parquet", filesystem=self.fs)
            try:
                yield from one.to_batches(batch_size=chunk_rows)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                columns = ", ".join(f"{f.name} {f.type}" for f in schema)
                raise SourceError(
                    f"{path}: its columns do not read as the first file's ({self.files[0]}: {columns}): {exc}"
                ) from exc


class Renamer:
    """``source.rename``: source column name -> contract column name, applied as rows are read."""

    def __init__(self, mapping: Mapping[str, str] | None) -> None:
        self.to_contract = dict(mapping or {})
        self.to_source = {v: k for k, v in self.to_contract.items()}

    def names(self, columns: Iterable[Any]) -> list[str]:
        return [self.to_contract.get(str(c), str(c)) for c in columns]

    def source(self, contract_name: str) -> str:
        return self.to_source.get(contract_name, contract_name)

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        return frame.rename(columns=self.to_contract) if self.to_contract else frame

    def table(self, table: pa.Table) -> pa.Table:
        return table.rename_columns(self.names(table.column_names)) if self.to_contract else table


Source = SqlSource | FileSource


def open_source(settings: Settings, readers: int | None = None) -> Source:
    """The source named in ``settings.source`` (``simulator`` reads the warehouse it writes to); a SQL source
    reads with ``readers`` connections (default ``collection.readers``)."""
    src, contract = settings.source, settings.contract
    if src.kind in ("simulator", "sql"):
        url = settings.warehouse_url if src.kind == "simulator" else settings.source_url
        return SqlSource(
            url,
            contract,
            table=None if src.query else src.table,
            query=src.query,
            rename=src.rename,
            readers=readers or settings.collection.readers,
        )
    if not src.path:
        raise SourceError(f"source.kind {src.kind} needs source.path (a local path, glob or fsspec URL)")
    return FileSource(settings.path_or_url(src.path), src.kind, contract, encoding=src.encoding, rename=src.rename)
