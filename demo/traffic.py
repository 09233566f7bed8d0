"""Simulated production traffic: what the operational system and its users would do.

New days of transactions land in the warehouse (as the card system writes them), the same rows
are scored through the prediction API over HTTP, and the true labels come back through
POST /feedback once they are known (in lists, as a team sends a day's chargebacks). The demo, the
end-to-end test and `make bench-loop` use it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pandas as pd
import sqlalchemy as sa

from core.contract import DatasetContract
from core.databases import engine_for
from core.settings import Settings
from demo.simulator import WarehouseWrite, roles, write_warehouse

FEEDBACK_PER_REQUEST = 1_000  # labels a POST /feedback: about 60 kB of JSON, far under max_body_bytes


@dataclass
class TrafficResult:
    requests: int = 0
    rows: int = 0
    failures: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    first_sent_at: float | None = None
    errors: list[str] = field(default_factory=list)


def append_days(settings: Settings, days: int, scenario: str = "none", seed: int | None = None) -> WarehouseWrite:
    """Append `days` new days to the warehouse, with `scenario` switched on from the first of them."""
    sim = settings.simulator
    return write_warehouse(
        settings.source_url,
        settings.source.table,
        seed=seed if seed is not None else sim.seed + 1,
        days=days,
        rows_per_day=sim.rows_per_day,
        fraud_rate=sim.fraud_rate,
        scenario=scenario,
        scenario_start=None,  # None: from the first appended day
        contract=settings.contract,
    )


def rows_between(settings: Settings, start: str, end: str) -> pd.DataFrame:
    """The warehouse rows of [start, end), with their true labels (matured or still in the label feed)."""
    c = settings.contract
    ts_col, id_col = roles(c)
    table = settings.source.table
    engine = engine_for(settings.source_url)
    try:
        meta = sa.MetaData()
        main = sa.Table(table, meta, autoload_with=engine)
        # Datetimes, not the ISO strings: PostgreSQL has no `timestamp >= varchar`.
        first, last = datetime.fromisoformat(start), datetime.fromisoformat(end)
        query = sa.select(main).where(main.c[ts_col] >= first, main.c[ts_col] < last)
        frame = pd.read_sql(query.order_by(main.c[ts_col]), engine)
        pending_name = f"{table}_pending_labels"
        if sa.inspect(engine).has_table(pending_name):
            pending = pd.read_sql(sa.select(sa.Table(pending_name, meta, autoload_with=engine)), engine)
            late = pending.set_index(id_col)["label"]
            frame[c.target.name] = frame[c.target.name].fillna(frame[id_col].map(late))
    finally:
        engine.dispose()
    return frame


def to_records(frame: pd.DataFrame, contract: DatasetContract) -> list[dict[str, Any]]:
    """JSON-ready records of the contract's input columns, typed as the contract declares them."""
    cols = contract.input_columns
    kinds = [contract.column(c).type for c in cols]
    out = []
    for row in frame[cols].itertuples(index=False, name=None):
        rec: dict[str, Any] = {}
        for name, kind, value in zip(cols, kinds, row, strict=True):
            if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
                rec[name] = None
            elif isinstance(value, pd.Timestamp):
                rec[name] = value.isoformat()
            elif kind == "int":
                rec[name] = int(value)  # SQL reads a nullable integer column as float
            elif hasattr(value, "item"):
                rec[name] = value.item()
            else:
                rec[name] = value
        out.append(rec)
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def send_predictions(
    api_url: str,
    frame: pd.DataFrame,
    contract: DatasetContract,
    *,
    batch: int = 50,
    concurrency: int = 4,
    api_key: str | None = None,
    timeout_s: float = 600,
) -> TrafficResult:
    """Score every row through POST /predict, `batch` records a request, `concurrency` at a time.

    Bounded by the frame's size and by `timeout_s`: a request that fails is counted, not retried.
    """
    result = TrafficResult()
    labels = frame[contract.target.name].tolist() if contract.target.name in frame else [None] * len(frame)
    payloads = list(zip(_chunks(to_records(frame, contract), batch), _chunks(labels, batch), strict=True))
    headers = {"X-API-Key": api_key} if api_key else {}
    deadline = time.monotonic() + timeout_s
    result.first_sent_at = time.time()

    with httpx.Client(base_url=api_url, timeout=60, headers=headers) as client:

        def one(item: tuple[list[dict[str, Any]], list[Any]]) -> tuple[list[dict[str, Any]], list[Any], Any]:
            records, labs = item
            if time.monotonic() > deadline:
                return records, labs, "deadline passed"
            try:
                resp = client.post("/predict", json=records)
            except httpx.HTTPError as exc:
                return records, labs, f"{exc.__class__.__name__}: {exc}"
            if resp.status_code != 200:
                return records, labs, f"HTTP {resp.status_code}: {resp.text[:300]}"
            return records, labs, resp.json()

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for records, labs, body in pool.map(one, payloads):
                result.requests += 1
                if isinstance(body, str):
                    result.failures += 1
                    result.errors.append(body)
                    continue
                result.rows += len(records)
                version = str(body["model_version"])
                result.versions[version] = result.versions.get(version, 0) + 1
                for pred, label in zip(body["predictions"], labs, strict=True):
                    result.request_ids.append(pred["request_id"])
                    result.labels.append(label)
    return result


def send_feedback(
    api_url: str,
    request_ids: list[str],
    labels: list[Any],
    *,
    concurrency: int = 4,
    api_key: str | None = None,
    per_request: int = FEEDBACK_PER_REQUEST,
) -> int:
    """POST /feedback for every (request id, label) with a known label, `per_request` labels a request (as a
    team sends a day's chargebacks); returns how many were accepted."""
    pairs = [(rid, lab) for rid, lab in zip(request_ids, labels, strict=True) if not pd.isna(lab)]
    items = [{"request_id": rid, "label": int(lab) if isinstance(lab, float) and lab.is_integer() else lab}
             for rid, lab in pairs]  # fmt: skip
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=api_url, timeout=30, headers=headers) as client:

        def some(chunk: list[dict[str, Any]]) -> int:
            try:
                resp = client.post("/feedback", json=chunk)
            except httpx.HTTPError:
                return 0
            return int(resp.json()["accepted"]) if resp.status_code == 202 else 0

        chunks = [items[i : i + per_request] for i in range(0, len(items), per_request)]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return sum(pool.map(some, chunks))


def served_version(api_url: str) -> str | None:
    try:
        resp = httpx.get(f"{api_url}/ready", timeout=5)
    except httpx.HTTPError:
        return None
    body = resp.json()
    return str(body["model_version"]) if body.get("model_version") is not None else None
