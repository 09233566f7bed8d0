"""What the chaos scenarios share: results, the serve command, models, load with bodies, PostgreSQL.

The API runs as the real serve command (`python -m serving`) on a free 127.0.0.1 port, as in the
tests and the Dockerfile. Load goes over HTTP from one keep-alive connection per client, and every
response body is kept (status, version, request ids, start and end time), so that a scenario can
check each reply and then look for each request id in the prediction log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.servers import start_api
from core.settings import get_settings

ADMIN_KEY = "chaos-admin-key"  # generated per run would be no safer: the API binds 127.0.0.1 only


# ---- results ------------------------------------------------------------------------------------
@dataclass
class ScenarioResult:
    name: str
    passed: bool = False
    requests: int = 0
    failures: int = 0
    rows_lost: int = 0
    # Rows a scenario may lose by its nature, with why (a process killed with rows in its memory): still
    # counted in rows_lost, so the table shows them.
    rows_lost_allowed: int = 0
    rows_lost_why: str = ""
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def expect(self, condition: bool, problem: str) -> bool:
        """Record `problem` unless `condition` holds; a scenario passes only with no problem recorded."""
        if not condition:
            self.problems.append(problem)
        return condition

    def finish(self) -> ScenarioResult:
        self.expect(self.failures == 0, f"{self.failures} failed requests")
        self.expect(
            self.rows_lost <= self.rows_lost_allowed,
            f"{self.rows_lost} rows lost"
            + (f" (at most {self.rows_lost_allowed} expected)" if self.rows_lost_allowed else ""),
        )
        self.passed = not self.problems
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "requests": self.requests,
            "failures": self.failures,
            "rows_lost": self.rows_lost,
            "rows_lost_why": self.rows_lost_why or None,
            "seconds": round(self.seconds, 1),
            "problems": self.problems,
            "detail": self.detail,
        }


def say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def env_vars(values: Mapping[str, str]) -> Iterator[None]:
    """Settings come from the environment, as for a user; restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """The first truthy value of `predicate()`, or None after `timeout` seconds (the caller decides)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError, OSError):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def example_records(n: int = 3) -> list[dict[str, Any]]:
    """`n` copies of the contract's example record, each with an id of its own."""
    from demo.simulator import roles

    contract = get_settings().contract
    base = {name: contract.column(name).example for name in contract.input_columns}
    _, id_col = roles(contract)
    return [{**base, id_col: f"chaos-{i}"} for i in range(n)]


# ---- models ---------------------------------------------------------------------------------------
def register(
    tracking_uri: str,
    model_name: str,
    seed: int,
    alias: str | None = "champion",
    params: dict[str, Any] | None = None,
) -> str:
    """A small example model in the format training produces (skops, signature, metadata); `params` over
    the logistic family's defaults."""
    import mlflow

    from serving.example_model import register_example_model

    mlflow.set_tracking_uri(tracking_uri)
    return register_example_model(
        get_settings().contract,
        model_name,
        seed=seed,
        n_rows=1_000,
        alias=alias,
        params=params,
        experiment_name="chaos",
    )


def set_champion(tracking_uri: str, model_name: str, version: str) -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(model_name, "champion", version)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---- the API --------------------------------------------------------------------------------------
@dataclass
class Api:
    url: str
    pid: int
    log: Path
    state: Path

    def ready(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/ready", timeout=5)
        return {"status": r.status_code, **r.json()}

    def reload(self) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/admin/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=120)
        return {"status": r.status_code, **r.json()}

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics (0 when absent): `name{labels}`."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        key = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        return 0.0


@contextlib.contextmanager
def serve(
    tracking_uri: str, model_name: str, state: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> Iterator[Api]:
    """`python -m serving` on a free port, in its own state directory; stopped on exit."""
    env = {
        "MLOPS_ENVIRONMENT": "test",
        "MLOPS_STATE_DIR": str(state),
        "MLOPS_MLFLOW_TRACKING_URI": tracking_uri,
        "MLOPS_MODEL_NAME": model_name,
        "MLOPS_ADMIN_API_KEY": ADMIN_KEY,
        "MLOPS_SERVING__LOG_FLUSH_S": "0.2",
        "MLOPS_SERVING_LOG_LEVEL": "warning",
        **(env or {}),
    }
    server = start_api(env, state / "serving.log", timeout=timeout)
    try:
        yield Api(server.url, server.proc.pid, server.log, state)
    finally:
        server.stop()


# ---- load with bodies -----------------------------------------------------------------------------
@dataclass
class Reply:
    client: int
    started: float  # time.monotonic()
    ended: float
    status: int | None
    version: str | None = None
    request_id: str | None = None
    ids: list[str] = field(default_factory=list)
    n_records: int = 1
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class Load:
    """Bounded load: `total` requests (or until `stop` is set, or `timeout_s`), `concurrency` clients,
    each its own keep-alive connection sending one request after another."""

    url: str
    total: int
    concurrency: int
    timeout_s: float
    records: list[dict[str, Any]]
    batch_sizes: tuple[int, ...] = (1, 3)
    stop: threading.Event = field(default_factory=threading.Event)
    milestones: dict[int, threading.Event] = field(default_factory=dict)  # sent count -> event
    replies: list[Reply] = field(default_factory=list)
    sent: int = 0

    def run(self) -> list[Reply]:
        asyncio.run(self._run())
        return self.replies

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="chaos-load", daemon=True)
        thread.start()
        return thread

    async def _run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        # Pre-encoded (the generator's own cost stays small next to the server's), one request after the
        # other through `records`: request k holds records k*n .. k*n+n-1 (wrapping), n its batch size.
        bodies: list[tuple[int, bytes]] = []
        for k in range(max(len(self.records), 1)):
            n = self.batch_sizes[k % len(self.batch_sizes)]
            chosen = [self.records[(k * n + j) % len(self.records)] for j in range(n)]
            bodies.append((n, json.dumps(chosen[0] if n == 1 else chosen).encode()))
        await asyncio.gather(*(self._client(i, bodies, deadline) for i in range(self.concurrency)))

    async def _client(self, index: int, bodies: list[tuple[int, bytes]], deadline: float) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        headers = {"content-type": "application/json"}
        async with httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits, headers=headers) as client:
            while not self.stop.is_set() and time.monotonic() < deadline and self.sent < self.total:
                self.sent += 1  # one event loop: no lock needed
                event = self.milestones.get(self.sent)
                if event is not None:
                    event.set()
                n, body = bodies[self.sent % len(bodies)]
                reply = Reply(index, time.monotonic(), 0.0, None, n_records=n)
                try:
                    r = await client.post("/predict", content=body)
                    reply.status = r.status_code
                    if r.status_code == 200:
                        body = r.json()
                        reply.version = str(body.get("model_version") or "") or None
                        reply.request_id = body.get("request_id")
                        reply.ids = [p["request_id"] for p in body.get("predictions", [])]
                        if reply.version is None or len(reply.ids) != n:
                            reply.error = f"malformed 200: version {reply.version!r}, {len(reply.ids)} of {n} ids"
                    else:
                        reply.error = f"HTTP {r.status_code}: {r.text[:200]}"
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    reply.error = f"{type(exc).__name__}: {exc}"
                reply.ended = time.monotonic()
                self.replies.append(reply)


def version_changes(replies: list[Reply], concurrency: int) -> list[int]:
    """Per client connection, how many times the answering version changed (in the order sent)."""
    out = []
    for client in range(concurrency):
        seen = [r.version for r in sorted(replies, key=lambda r: r.started) if r.client == client and r.ok]
        out.append(sum(a != b for a, b in itertools.pairwise(seen)))
    return out


def worker_pids(api_pid: int) -> list[int]:
    """The uvicorn worker processes of a multi-worker service (children started by multiprocessing's
    spawn, not its resource tracker)."""
    pids = []
    for task in Path(f"/proc/{api_pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for pid in map(int, children):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except FileNotFoundError:
                continue
            if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
                pids.append(pid)
    return sorted(pids)


def load_summary(replies: list[Reply]) -> dict[str, Any]:
    failed = [r for r in replies if not r.ok]
    versions: dict[str, int] = {}
    for r in replies:
        if r.version:
            versions[r.version] = versions.get(r.version, 0) + 1
    span = (max(r.ended for r in replies) - min(r.started for r in replies)) if replies else 0.0
    return {
        "requests": len(replies),
        "failed": len(failed),
        "rows": sum(len(r.ids) for r in replies),
        "versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
        "rps": round(len(replies) / span, 1) if span else 0.0,
        "first_errors": sorted({r.error or "" for r in failed})[:5],
    }


def lost_rows(log_url: str, replies: list[Reply], timeout: float) -> tuple[int, dict[str, Any]]:
    """How many predictions answered 200 never reached the prediction log (waiting up to `timeout` s
    for the writer and any spool replay), and whether any row names another version than its reply."""
    from core.predictions import read_predictions

    expected = {rid: r.version for r in replies if r.ok for rid in r.ids}

    def stored() -> dict[str, str]:
        frame = read_predictions(log_url)
        if frame.empty:
            return {}
        return dict(zip(frame["request_id"], frame["model_version"].astype(str), strict=True))

    rows: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the store may still be coming back
            rows = stored()
        if expected.keys() <= rows.keys():
            break
        time.sleep(0.5)
    missing = [rid for rid in expected if rid not in rows]
    other_version = [rid for rid, v in expected.items() if rid in rows and rows[rid] != v]
    return len(missing), {
        "expected_rows": len(expected),
        "stored_rows": len(rows),
        "missing_example": missing[:3],
        "rows_with_another_version": len(other_version),
    }


# ---- PostgreSQL -------------------------------------------------------------------------------------
PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_USER = os.environ.get("MLOPS_TEST_PG_USER", "postgres")


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.encode())  # bytes: the statements are built here from generated names


@contextlib.contextmanager
def pg_database(prefix: str) -> Iterator[str]:
    """A throwaway database; yields its postgresql:// URL; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_take_down(url: str) -> None:
    """To its clients the database is gone: new connections refused, open ones cut."""
    db = url.rsplit("/", 1)[1]
    pg_admin(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
    pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")


def pg_bring_back(url: str) -> None:
    pg_admin(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" ALLOW_CONNECTIONS true')


@dataclass
class Context:
    """Where a run keeps its files, and the MLflow server shared by scenarios that do not kill it."""

    work: Path
    tracking_uri: str
