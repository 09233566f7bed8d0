"""A card-transaction simulator: the default data source, deterministic by seed.

Each simulated day is generated from its own random stream (seed, day), so a day's rows do not
depend on where generation started: ``simulate(days=60)`` equals two 30-day runs back to back, and
10M rows can be produced day by day in constant memory.

The fraud label is drawn from a logistic model over the features, so the signal is learnable and its
direction is known: high velocity (txn_count_1h / 24h), large amounts for the category, online,
digital goods / electronics / gambling, night hours, new customers and far-from-home transactions
all raise the fraud probability. The velocity effect is strong and monotone on purpose: behavioural
tests check that a much higher ``txn_count_1h`` raises a trained model's score.

Named drift scenarios switch on from ``scenario_start``:

- ``covariate_shift``: amounts inflate x1.8 and a new merchant category ``crypto`` appears; the fraud
  mechanism P(y | x) is unchanged.
- ``concept_drift``: the fraud pattern changes: fraud moves to small POS purchases in daytime at
  groceries / fuel, and velocity, tenure and distance matter much less.
- ``data_quality``: faults an operational system produces: nulls in non-nullable columns (channel,
  txn_count_1h), out-of-range values (negative or huge amounts, negative counts) and wrong types (the
  string ``'N/A'`` in ``amount``). Wrong types can only land where the storage accepts them (SQLite,
  CSV, a pandas frame): a typed PostgreSQL column refuses them, so ``write_warehouse`` leaves them out
  there and says so; nulls and out-of-range values are still injected.

Labels become known ``target.label_delay_days`` after the event (chargebacks arrive late): rows
within that delay of ``as_of`` get a NULL label. ``write_warehouse`` keeps their true labels in a
side table (``<table>_pending_labels``, the chargeback feed) and back-fills them with an UPDATE once a
later append moves ``as_of`` past their maturity, as an operational system would.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa

from core.contract import DatasetContract
from core.databases import engine_for, normalise_url, sqlite_path
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

Scenario = Literal["none", "covariate_shift", "concept_drift", "data_quality"]
SCENARIOS: tuple[str, ...] = ("none", "covariate_shift", "concept_drift", "data_quality")

# The simulator knows these columns; a contract may use any subset of them (in any order).
SIMULATED_COLUMNS = (
    "transaction_id",
    "event_time",
    "amount",
    "merchant_category",
    "channel",
    "country",
    "device",
    "customer_tenure_days",
    "txn_count_1h",
    "txn_count_24h",
    "amount_sum_24h",
    "distance_from_home_km",
    "is_fraud",
)

CHANNELS = np.array(["pos", "online", "atm"], dtype=object)
CHANNEL_P = np.array([0.62, 0.30, 0.08])
CATEGORIES = np.array(
    ["grocery", "restaurants", "fuel", "electronics", "travel", "fashion", "digital_goods", "gambling", "crypto"],
    dtype=object,
)
# Category mix by channel (rows: pos, online); ATM withdrawals have no merchant category.
CATEGORY_P = {
    "pos": np.array([0.34, 0.22, 0.16, 0.06, 0.04, 0.14, 0.02, 0.02, 0.0]),
    "online": np.array([0.08, 0.06, 0.0, 0.20, 0.18, 0.22, 0.18, 0.08, 0.0]),
}
# Median amount (EUR) per category; index 9 is the ATM withdrawal.
CATEGORY_MEDIAN = np.array([35.0, 32.0, 60.0, 260.0, 420.0, 85.0, 18.0, 45.0, 300.0, 120.0])
ATM_CATEGORY = 9
COUNTRIES = np.array(["DE", "FR", "ES", "IT", "NL", "GB", "US", "OTHER"], dtype=object)
COUNTRY_P = np.array([0.50, 0.11, 0.09, 0.08, 0.08, 0.06, 0.04, 0.04])
# Share of transactions in each hour of the day: quiet nights, busy lunch and evening.
HOUR_P = np.array([1.2, 0.8, 0.5, 0.4, 0.4, 0.6, 1.5, 3.0, 4.5, 5.5, 6.0, 6.5, 7.5, 7.0, 6.0, 5.8, 6.0, 6.5, 7.0,
                   6.5, 5.0, 3.8, 2.6, 1.9])  # fmt: skip
HOUR_P = HOUR_P / HOUR_P.sum()

COVARIATE_AMOUNT_FACTOR = 1.8
CRYPTO_SHARE_ONLINE = 0.12
# data_quality: share of rows (after scenario_start) given each fault; ~9% of rows in all, so a
# collection window inside the scenario fails the default max_bad_share of 5%.
DQ_NULL_CHANNEL = 0.03
DQ_NULL_COUNT = 0.01
DQ_OUT_OF_RANGE = 0.03
DQ_WRONG_TYPE = 0.02
WRONG_TYPE_VALUE = "N/A"


class SimulatorError(ValueError):
    """The simulator was asked for something it cannot produce."""


# ---- the generative model ----------------------------------------------------------------------
def _features(rng: np.random.Generator, n: int, day: date, *, inflate: bool, crypto: bool) -> dict[str, np.ndarray]:
    """Draw the features of ``n`` transactions on ``day`` (unsorted), as numpy arrays."""
    channel_idx = rng.choice(3, size=n, p=CHANNEL_P)
    cat_idx = np.full(n, ATM_CATEGORY)
    for ch, p in (("pos", 0), ("online", 1)):
        mask = channel_idx == p
        cat_idx[mask] = rng.choice(len(CATEGORIES), size=int(mask.sum()), p=CATEGORY_P[ch])
    if crypto:
        online = np.flatnonzero(channel_idx == 1)
        cat_idx[online[rng.random(online.size) < CRYPTO_SHARE_ONLINE]] = 8
    amount = CATEGORY_MEDIAN[cat_idx] * rng.lognormal(0.0, 0.9, size=n)
    if inflate:
        amount *= COVARIATE_AMOUNT_FACTOR
    amount = np.round(np.clip(amount, 0.5, 95_000.0), 2)

    hour = rng.choice(24, size=n, p=HOUR_P)
    seconds = hour * 3600 + rng.integers(0, 3600, size=n)
    event_time = np.datetime64(day, "s") + seconds.astype("timedelta64[s]")

    # Device: terminals at POS/ATM, phones or desktops online; missing for some ATM rows.
    device = np.where(channel_idx == 1, np.where(rng.random(n) < 0.65, "mobile", "desktop"), "terminal").astype(object)
    device[(channel_idx == 2) & (rng.random(n) < 0.35)] = None

    country_idx = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_P)
    tenure = np.minimum(rng.exponential(900.0, size=n), 19_999).astype(np.int64)
    tenure_missing = rng.random(n) < 0.03
    # Velocity: most cards are quiet; a few are in a burst (card testing, a shopping spree).
    burst = rng.random(n) < 0.04
    count_1h = rng.poisson(0.25, size=n) + burst * rng.geometric(0.18, size=n)
    count_1h = np.minimum(count_1h, 400)
    count_24h = np.minimum(count_1h + rng.poisson(2.5, size=n), 1_900)
    amount_sum_24h = np.round(amount + count_24h * CATEGORY_MEDIAN[cat_idx] * rng.lognormal(0.0, 0.6, size=n), 2)
    amount_sum_24h = np.minimum(amount_sum_24h, 990_000.0)
    sum_missing = rng.random(n) < 0.02
    domestic = country_idx == 0
    distance = np.where(domestic, rng.lognormal(1.6, 1.0, size=n), rng.lognormal(6.3, 0.8, size=n))
    distance = np.round(np.minimum(distance, 19_000.0), 1)
    distance_missing = rng.random(n) < 0.04
    return {
        "event_time": event_time,
        "hour": hour,
        "channel_idx": channel_idx,
        "cat_idx": cat_idx,
        "amount": amount,
        "device": device,
        "country_idx": country_idx,
        "tenure": tenure,
        "tenure_missing": tenure_missing,
        "count_1h": count_1h,
        "count_24h": count_24h,
        "amount_sum_24h": amount_sum_24h,
        "sum_missing": sum_missing,
        "distance": distance,
        "distance_missing": distance_missing,
    }


def _risk(f: dict[str, np.ndarray], *, concept_drift: bool) -> np.ndarray:
    """The fraud log-odds without intercept. Capped terms keep the effects monotone but bounded."""
    ch, cat, hour = f["channel_idx"], f["cat_idx"], f["hour"]
    rel_amount = np.clip(np.log(f["amount"] / CATEGORY_MEDIAN[np.where(cat == 8, 6, cat)]), -2.0, 3.0)
    night = (hour <= 5).astype(float)
    if not concept_drift:
        tenure_risk = np.where(
            f["tenure_missing"], 0.4, np.where(f["tenure"] < 30, 1.4, np.where(f["tenure"] < 180, 0.6, 0.0))
        )
        return (
            0.55 * np.minimum(f["count_1h"], 12)
            + 0.05 * np.minimum(f["count_24h"], 40)
            + 0.8 * np.clip(rel_amount, 0.0, None)
            + 1.0 * (ch == 1)
            - 0.4 * (ch == 2)
            + np.select([cat == 6, cat == 3, cat == 7, cat == 8, cat == 4], [1.3, 0.9, 1.1, 1.3, 0.3], 0.0)
            + 1.1 * night
            + tenure_risk
            + 0.7 * np.clip(np.log10(f["distance"] + 1.0) - 2.0, 0.0, 2.0) * ~f["distance_missing"]
        )
    daytime = ((hour >= 10) & (hour <= 16)).astype(float)
    return (
        0.12 * np.minimum(f["count_1h"], 12)
        + 1.1 * np.clip(-rel_amount, 0.0, None)
        + 1.3 * (ch == 0)
        + np.select([cat == 0, cat == 2], [1.0, 1.0], 0.0)
        + 0.9 * daytime
    )


@lru_cache(maxsize=16)
def _intercept(fraud_rate: float, concept_drift: bool) -> float:
    """The intercept that gives ``fraud_rate`` positives on a fixed calibration sample."""
    if not 0.0 < fraud_rate < 1.0:
        raise SimulatorError(f"fraud_rate must be in (0, 1), got {fraud_rate}")
    feats = _features(np.random.default_rng(20260101), 200_000, date(2026, 1, 1), inflate=False, crypto=False)
    risk = _risk(feats, concept_drift=concept_drift)
    lo, hi = -30.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(mid + risk)))) < fraud_rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def fraud_probability(frame: pd.DataFrame, *, fraud_rate: float = 0.02, concept_drift: bool = False) -> np.ndarray:
    """The simulator's true P(fraud | x) for rows with the simulated columns (tests use it as an oracle)."""
    cat_lookup = {c: i for i, c in enumerate(CATEGORIES)}
    ch_lookup = {c: i for i, c in enumerate(CHANNELS)}
    ts = pd.to_datetime(frame["event_time"])
    tenure = pd.to_numeric(frame["customer_tenure_days"], errors="coerce")
    distance = pd.to_numeric(frame["distance_from_home_km"], errors="coerce")
    feats = {
        "channel_idx": frame["channel"].map(ch_lookup).fillna(0).to_numpy(dtype=np.int64),
        "cat_idx": frame["merchant_category"].map(cat_lookup).fillna(ATM_CATEGORY).to_numpy(dtype=np.int64),
        "hour": ts.dt.hour.to_numpy(),
        "amount": pd.to_numeric(frame["amount"], errors="coerce").to_numpy(dtype=float),
        "tenure": tenure.fillna(0).to_numpy(dtype=float),
        "tenure_missing": tenure.isna().to_numpy(),
        "count_1h": pd.to_numeric(frame["txn_count_1h"]).to_numpy(dtype=float),
        "count_24h": pd.to_numeric(frame["txn_count_24h"]).to_numpy(dtype=float),
        "distance": distance.fillna(0).to_numpy(dtype=float),
        "distance_missing": distance.isna().to_numpy(),
    }
    logit = _intercept(fraud_rate, concept_drift) + _risk(feats, concept_drift=concept_drift)
    return np.asarray(1.0 / (1.0 + np.exp(-logit)))


# ---- one day ------------------------------------------------------------------------------------
def _day_frame(
    day: date,
    n: int,
    *,
    seed: int,
    fraud_rate: float,
    scenario: str,
    scenario_on: bool,
    wrong_types: bool,
) -> pd.DataFrame:
    """All columns of one day's ``n`` transactions, sorted by time, with the true label."""
    # One random stream per (seed, day): a day's rows do not depend on the other days generated.
    rng = np.random.default_rng([seed, day.toordinal()])
    shift = scenario_on and scenario == "covariate_shift"
    drift = scenario_on and scenario == "concept_drift"
    f = _features(rng, n, day, inflate=shift, crypto=shift)
    logit = _intercept(fraud_rate, drift) + _risk(f, concept_drift=drift)
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    order = np.argsort(f["event_time"], kind="stable")
    ids = pd.Series(np.arange(n)).astype(str).str.zfill(8)
    frame = pd.DataFrame(
        {
            "transaction_id": (f"tx-{day:%Y%m%d}-" + ids).to_numpy(dtype=object),
            "event_time": f["event_time"][order].astype("datetime64[ns]"),
            "amount": f["amount"][order],
            "merchant_category": _with_missing(CATEGORIES[np.minimum(f["cat_idx"], 8)], f["cat_idx"] == ATM_CATEGORY)[
                order
            ],
            "channel": CHANNELS[f["channel_idx"]][order],
            "country": COUNTRIES[f["country_idx"]][order],
            "device": f["device"][order],
            "customer_tenure_days": pd.Series(f["tenure"][order], dtype="Int64").mask(f["tenure_missing"][order]),
            "txn_count_1h": f["count_1h"][order].astype(np.int64),
            "txn_count_24h": f["count_24h"][order].astype(np.int64),
            "amount_sum_24h": np.where(f["sum_missing"], np.nan, f["amount_sum_24h"])[order],
            "distance_from_home_km": np.where(f["distance_missing"], np.nan, f["distance"])[order],
            "is_fraud": pd.array(label[order], dtype="Int64"),
        }
    )
    if scenario_on and scenario == "data_quality":
        frame = _inject_faults(frame, rng, wrong_types=wrong_types)
    return frame


def _with_missing(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """An object array with None where ``missing`` (how a NULL text value arrives from a database)."""
    out = values.astype(object)
    out[missing] = None
    return out


def _inject_faults(frame: pd.DataFrame, rng: np.random.Generator, *, wrong_types: bool) -> pd.DataFrame:
    n = len(frame)
    pick = rng.random(n)
    null_channel = pick < DQ_NULL_CHANNEL
    null_count = (pick >= DQ_NULL_CHANNEL) & (pick < DQ_NULL_CHANNEL + DQ_NULL_COUNT)
    lo = DQ_NULL_CHANNEL + DQ_NULL_COUNT
    out_of_range = (pick >= lo) & (pick < lo + DQ_OUT_OF_RANGE)
    wrong = (pick >= lo + DQ_OUT_OF_RANGE) & (pick < lo + DQ_OUT_OF_RANGE + DQ_WRONG_TYPE)

    frame["channel"] = pd.Series(_with_missing(frame["channel"].to_numpy(dtype=object), null_channel))
    frame["txn_count_1h"] = frame["txn_count_1h"].astype("Int64").mask(null_count)
    # Half of the out-of-range rows get an absurd amount, half a negative velocity count.
    half = rng.random(n) < 0.5
    frame.loc[out_of_range & half, "amount"] = 250_000.0
    frame.loc[out_of_range & ~half, "txn_count_24h"] = -1
    if wrong_types and wrong.any():
        amount = frame["amount"].astype(object)
        amount[wrong] = WRONG_TYPE_VALUE
        frame["amount"] = amount
    return frame


# ---- public API ---------------------------------------------------------------------------------
def _check(contract: DatasetContract, scenario: str) -> None:
    unknown = [c for c in contract.column_names if c not in SIMULATED_COLUMNS]
    if unknown:
        raise SimulatorError(
            f"the simulator cannot produce contract columns {unknown}; it knows {list(SIMULATED_COLUMNS)}. "
            "Point source.kind at your own data (csv, parquet or sql) instead."
        )
    if scenario not in SCENARIOS:
        raise SimulatorError(f"unknown scenario {scenario!r}; choose one of {list(SCENARIOS)}")


def _contract(contract: DatasetContract | None) -> DatasetContract:
    return contract if contract is not None else get_settings().contract


def _day_sizes(n_rows: int | None, days: int, rows_per_day: int) -> list[int]:
    if days <= 0:
        raise SimulatorError(f"days must be positive, got {days}")
    if n_rows is None:
        if rows_per_day <= 0:
            raise SimulatorError(f"rows_per_day must be positive, got {rows_per_day}")
        return [rows_per_day] * days
    if n_rows < 0:
        raise SimulatorError(f"n_rows must be >= 0, got {n_rows}")
    base, extra = divmod(n_rows, days)
    return [base + (1 if i < extra else 0) for i in range(days)]


def _label_cutoff(contract: DatasetContract, as_of: datetime) -> np.datetime64:
    return np.datetime64(as_of - timedelta(days=contract.target.label_delay_days), "ns")


def _to_datetime(value: str | date | datetime) -> datetime:
    return pd.Timestamp(value).to_pydatetime().replace(tzinfo=None)


def iter_simulate(
    n_rows: int | None = None,
    *,
    seed: int = 42,
    start: str = "2026-01-01",
    days: int = 60,
    rows_per_day: int = 2000,
    fraud_rate: float = 0.02,
    scenario: str = "none",
    scenario_start: str | None = None,
    as_of: str | None = None,
    contract: DatasetContract | None = None,
    chunk_rows: int = 250_000,
    wrong_types: bool = True,
    true_labels: bool = False,
) -> Iterator[pd.DataFrame]:
    """Yield the rows of :func:`simulate` in time order, at most ``chunk_rows`` (or one day) at a time.

    ``n_rows`` spreads exactly that many rows evenly over ``days``; otherwise each day has
    ``rows_per_day``. ``true_labels=True`` keeps every label (no NULLs for immature rows).
    """
    contract = _contract(contract)
    _check(contract, scenario)
    first = _to_datetime(start).date()
    sizes = _day_sizes(n_rows, days, rows_per_day)
    end = datetime.combine(first + timedelta(days=days), datetime.min.time())
    cutoff = _label_cutoff(contract, _to_datetime(as_of) if as_of else end)
    scen_from = _to_datetime(scenario_start).date() if scenario_start else first
    target = contract.target.name
    for i, size in enumerate(sizes):
        if size == 0:
            continue
        day = first + timedelta(days=i)
        frame = _day_frame(
            day,
            size,
            seed=seed,
            fraud_rate=fraud_rate,
            scenario=scenario,
            scenario_on=scenario != "none" and day >= scen_from,
            wrong_types=wrong_types,
        )
        if not true_labels:
            frame[target] = frame[target].mask(frame["event_time"].to_numpy() > cutoff)
        frame = frame[contract.column_names]
        for lo in range(0, len(frame), chunk_rows):
            yield frame.iloc[lo : lo + chunk_rows].reset_index(drop=True)


def simulate(
    n_rows: int | None = None,
    *,
    seed: int = 42,
    start: str = "2026-01-01",
    days: int = 60,
    rows_per_day: int = 2000,
    fraud_rate: float = 0.02,
    scenario: str = "none",
    scenario_start: str | None = None,
    as_of: str | None = None,
    contract: DatasetContract | None = None,
    wrong_types: bool = True,
    true_labels: bool = False,
) -> pd.DataFrame:
    """Simulated transactions with exactly the contract's columns, sorted by event time.

    Rows whose event time is within ``target.label_delay_days`` of ``as_of`` (default: the end of the
    simulated period) have a NULL (``<NA>``) label, as in the warehouse; pass ``true_labels=True`` (or
    an ``as_of`` well after the period) for a fully labelled frame. ``is_fraud`` is a nullable Int64.
    """
    contract = _contract(contract)
    frames = list(
        iter_simulate(
            n_rows,
            seed=seed,
            start=start,
            days=days,
            rows_per_day=rows_per_day,
            fraud_rate=fraud_rate,
            scenario=scenario,
            scenario_start=scenario_start,
            as_of=as_of,
            contract=contract,
            chunk_rows=max(1, n_rows or rows_per_day),
            wrong_types=wrong_types,
            true_labels=true_labels,
        )
    )
    if not frames:
        return _day_frame(date(2026, 1, 1), 0, seed=seed, fraud_rate=fraud_rate, scenario="none",
                          scenario_on=False, wrong_types=False)[contract.column_names]  # fmt: skip
    return pd.concat(frames, ignore_index=True)


# ---- the warehouse ------------------------------------------------------------------------------
_SQL_TYPES: dict[str, Any] = {
    "float": sa.Float,
    "int": sa.BigInteger,
    "bool": sa.Boolean,
    "category": sa.Text,
    "string": sa.Text,
    "datetime": sa.DateTime,
}


@dataclass(frozen=True)
class WarehouseWrite:
    """What one :func:`write_warehouse` call did."""

    table: str
    rows_written: int
    labels_backfilled: int
    start: str
    end: str
    as_of: str
    wrong_types_injected: bool


def roles(contract: DatasetContract) -> tuple[str, str]:
    """(timestamp column, id column): the simulator writes transactions, which have both."""
    if contract.timestamp_column is None or contract.id_column is None:
        raise ValueError(
            f"the simulator needs a contract with an id and a timestamp column; '{contract.name}' lacks one"
        )
    return contract.timestamp_column, contract.id_column


def warehouse_table(contract: DatasetContract, table: str, metadata: sa.MetaData) -> sa.Table:
    """The warehouse table typed from the contract, keyed by the id column, indexed by (time, id)."""
    ts_col, id_col = roles(contract)
    cols = [
        sa.Column(
            c.name,
            _SQL_TYPES[c.type](),
            primary_key=c.name == contract.id_column,
            # Only the key is NOT NULL: an operational table lets faults through, collection catches them.
            nullable=c.name != contract.id_column,
        )
        for c in contract.columns
    ]
    return sa.Table(
        table,
        metadata,
        *cols,
        sa.Index(f"ix_{table}_time_id", ts_col, id_col),
    )


def _pending_table(contract: DatasetContract, table: str, metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        f"{table}_pending_labels",
        metadata,
        sa.Column(roles(contract)[1], sa.Text, primary_key=True),
        sa.Column("label", sa.BigInteger, nullable=False),
        sa.Column("known_at", sa.DateTime, nullable=False, index=True),
    )


def _append(conn: sa.Connection | None, bulk: _AdbcSqliteAppender | None, table: sa.Table, frame: pd.DataFrame) -> None:
    if bulk is not None:
        bulk.insert(table, frame)
    else:
        assert conn is not None
        _insert(conn, table, frame)


def _insert(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> None:
    """Append rows; NaN/NA become NULL."""
    if conn.dialect.name == "sqlite":
        _insert_sqlite(conn, table, frame)
        return
    # Portable executemany; pd.Timestamp is a datetime subclass, so drivers bind it as a timestamp.
    clean = frame.astype(object).where(frame.notna(), None)  # type: ignore[call-overload]
    conn.execute(table.insert(), clean.to_dict("records"))


def _insert_sqlite(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> None:
    """SQLite through its driver's executemany (several times faster than row dicts at 10M rows).

    SQLite stores what it is given, a string in a REAL column included, as real operational tables
    do: that is how the data_quality scenario's wrong types land. Timestamps are written in
    SQLAlchemy's SQLite format, the one window queries compare against.
    """
    out = frame.copy()
    for c in table.columns:
        if isinstance(c.type, sa.DateTime) and pd.api.types.is_datetime64_any_dtype(out[c.name]):
            out[c.name] = out[c.name].dt.strftime("%Y-%m-%d %H:%M:%S.%f")
    clean = out.astype(object).where(out.notna(), None)  # type: ignore[call-overload]
    names = [c.name for c in table.columns]
    quote = conn.dialect.identifier_preparer.quote
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"VALUES ({', '.join('?' for _ in names)})"
    )
    conn.exec_driver_sql(sql, list(clean[names].itertuples(index=False, name=None)))


class _AdbcSqliteAppender:
    """Appends to SQLite tables through ADBC's bulk ingest (Arrow columns bound in C: about three times
    the rows a second of executemany over Python tuples), all appends in one transaction.

    Used when every value has its column's type; the data_quality scenario's wrong types (text in a REAL
    column) cannot be Arrow columns and go through SQLite's own driver instead.
    """

    def __init__(self, path: str) -> None:
        import adbc_driver_sqlite.dbapi as adbc_sqlite

        self.conn = adbc_sqlite.connect(path)

    def insert(self, table: sa.Table, frame: pd.DataFrame) -> None:
        import pyarrow as pa

        out = frame[[c.name for c in table.columns]].copy()
        for c in table.columns:
            if isinstance(c.type, sa.DateTime) and pd.api.types.is_datetime64_any_dtype(out[c.name]):
                out[c.name] = out[c.name].dt.strftime("%Y-%m-%d %H:%M:%S.%f")
        with self.conn.cursor() as cur:
            cur.adbc_ingest(table.name, pa.Table.from_pandas(out, preserve_index=False), mode="append")

    def commit(self) -> None:
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def write_warehouse(
    url: str,
    table: str = "transactions",
    *,
    n_rows: int | None = None,
    seed: int = 42,
    start: str | None = None,
    days: int = 60,
    rows_per_day: int = 2000,
    fraud_rate: float = 0.02,
    scenario: str = "none",
    scenario_start: str | None = None,
    as_of: str | None = None,
    contract: DatasetContract | None = None,
    chunk_rows: int = 100_000,
) -> WarehouseWrite:
    """Append simulated days to a warehouse table (created if missing) and back-fill matured labels.

    ``start=None`` continues the day after the newest row in the table (or 2026-01-01 if it is empty).
    Labels of rows within the label delay of ``as_of`` (default: the end of the appended period) are
    stored as NULL and kept in ``<table>_pending_labels`` until an append with a later ``as_of``.
    On PostgreSQL (or any dialect but SQLite) the data_quality scenario cannot store wrong types in
    typed columns; it injects nulls and out-of-range values only and logs that.
    """
    contract = _contract(contract)
    _check(contract, scenario)
    engine = engine_for(url)
    meta = sa.MetaData()
    main = warehouse_table(contract, table, meta)
    pending = _pending_table(contract, table, meta)
    wrong_types = engine.dialect.name == "sqlite"
    if scenario == "data_quality" and not wrong_types:
        log.warning(
            "data_quality on %s: wrong types (e.g. 'N/A' in amount) cannot land in a typed %s column; "
            "injecting nulls and out-of-range values only",
            engine.dialect.name,
            engine.dialect.name,
        )
    (ts_col, id_col), target = roles(contract), contract.target.name
    try:
        meta.create_all(engine)
        if start:
            first = _to_datetime(start)
        else:  # continue the day after the newest row
            with engine.connect() as conn:
                last = conn.execute(sa.select(sa.func.max(main.c[ts_col]))).scalar()
            first = _to_datetime(last) + timedelta(days=1) if last else datetime(2026, 1, 1)
        first = datetime.combine(first.date(), datetime.min.time())
        end = first + timedelta(days=days)
        as_of_dt = _to_datetime(as_of) if as_of else end
        delay = timedelta(days=contract.target.label_delay_days)
        cutoff = np.datetime64(as_of_dt - delay, "ns")
        written = 0
        path = sqlite_path(normalise_url(url))
        bulk = _AdbcSqliteAppender(str(path)) if path is not None and scenario != "data_quality" else None
        with contextlib.ExitStack() as stack:
            slow = None if bulk is not None else stack.enter_context(engine.begin())
            if bulk is not None:
                stack.callback(bulk.close)
            for chunk in iter_simulate(
                n_rows,
                seed=seed,
                start=first.date().isoformat(),
                days=days,
                rows_per_day=rows_per_day,
                fraud_rate=fraud_rate,
                scenario=scenario,
                scenario_start=scenario_start,
                contract=contract,
                chunk_rows=chunk_rows,
                wrong_types=wrong_types,
                true_labels=True,
            ):
                immature = chunk[ts_col].to_numpy() > cutoff
                if immature.any():
                    feed = pd.DataFrame(
                        {
                            id_col: chunk.loc[immature, id_col],
                            "label": chunk.loc[immature, target].astype("int64"),
                            "known_at": chunk.loc[immature, ts_col] + delay,
                        }
                    )
                    _append(slow, bulk, pending, feed)
                    chunk[target] = chunk[target].mask(immature)
                _append(slow, bulk, main, chunk)
                written += len(chunk)
            if bulk is not None:
                bulk.commit()
        with engine.begin() as conn:
            backfilled = _backfill_labels(conn, main, pending, contract, as_of_dt)
    finally:
        engine.dispose()
    log.info("warehouse %s: %d rows appended (%s .. %s), %d labels back-filled", table, written, first, end, backfilled)
    return WarehouseWrite(
        table=table,
        rows_written=written,
        labels_backfilled=backfilled,
        start=first.isoformat(),
        end=end.isoformat(),
        as_of=as_of_dt.isoformat(),
        wrong_types_injected=wrong_types and scenario == "data_quality",
    )


def _backfill_labels(
    conn: sa.Connection, main: sa.Table, pending: sa.Table, contract: DatasetContract, as_of: datetime
) -> int:
    """Copy matured labels from the chargeback feed into the warehouse rows, then drop them from the feed."""
    id_col, target = roles(contract)[1], contract.target.name
    matured = sa.select(pending.c[id_col]).where(pending.c.known_at <= as_of)
    label = sa.select(pending.c.label).where(pending.c[id_col] == main.c[id_col]).scalar_subquery()
    result = conn.execute(
        sa.update(main).where(main.c[id_col].in_(matured), main.c[target].is_(None)).values({target: label})
    )
    conn.execute(sa.delete(pending).where(pending.c.known_at <= as_of))
    return int(result.rowcount or 0)


def seed_warehouse(settings: Settings) -> WarehouseWrite | None:
    """Fill the default warehouse from ``settings.simulator`` if its table is empty; None if it had rows."""
    url, table = settings.source_url, settings.source.table
    engine = engine_for(url)
    try:
        if sa.inspect(engine).has_table(table):
            with engine.connect() as conn:
                if conn.execute(
                    sa.text(f"SELECT 1 FROM {engine.dialect.identifier_preparer.quote(table)} LIMIT 1")
                ).first():
                    return None
    finally:
        engine.dispose()
    sim = settings.simulator
    return write_warehouse(
        url,
        table,
        seed=sim.seed,
        start=sim.start,
        days=sim.days,
        rows_per_day=sim.rows_per_day,
        fraud_rate=sim.fraud_rate,
        scenario=sim.scenario,
        scenario_start=sim.scenario_start,
        contract=settings.contract,
    )
