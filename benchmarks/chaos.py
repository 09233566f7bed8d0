"""Fault scenarios against the real local stack: `make chaos` -> benchmarks/results/chaos.json.

    python -m benchmarks.chaos [--only NAME ...] [--requests N] [--concurrency C]

Each scenario starts what it needs (MLflow server, the API as `python -m serving`, a throwaway
PostgreSQL database, a Prefect server and worker) on free 127.0.0.1 ports under its own directory,
breaks something for a bounded time under bounded load, and reports
{name, passed, requests, failures, rows_lost, seconds, problems, detail}. A scenario that cannot run
(a server that does not start, a timeout) is not passed, with the reason in `problems`.

- mlflow_down: the registry dies under load and comes back; the API keeps its champion (0 failed
  predictions), /ready says the registry is unreachable, the watcher picks up a new alias afterwards.
- prediction_store_down: the PostgreSQL prediction log refuses connections under load; every
  prediction answered meanwhile reaches it once it returns (spool and replay).
- corrupt_batch: faulty rows and a schema-broken file at the source; quarantined with reasons, the
  watermark never passes rows that were not loaded or quarantined, every source row accounted for.
- swap_under_load: N requests at concurrency C while the champion moves three times (see
  `swap_under_load` for what "never mixes versions" is checked against).
- retraining_killed, prefect_restart: see benchmarks/chaos_prefect.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.chaos_support import (
    Api,
    Context,
    Load,
    Reply,
    ScenarioResult,
    env_vars,
    example_records,
    load_summary,
    lost_rows,
    pg_bring_back,
    pg_database,
    pg_take_down,
    register,
    say,
    serve,
    set_champion,
    unique,
    version_changes,
    wait_until,
)
from benchmarks.record import write_result
from core.databases import engine_for
from core.servers import Server, free_port, start_mlflow
from core.settings import PROJECT_ROOT, get_settings

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "chaos.json"
WORK = PROJECT_ROOT / "benchmarks" / ".work" / "chaos"


def _sqlite_log(state: Path) -> str:
    return f"sqlite:///{state / 'predictions.db'}"


def _kill(server: Server) -> None:
    """A crash, not a shutdown: SIGKILL to the whole process group, no chance to clean up."""
    try:
        os.killpg(os.getpgid(server.proc.pid), signal.SIGKILL)
    except ProcessLookupError:
        return
    server.proc.wait(30)


def _ready_when(api: Api, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    body = api.ready()
    return body if condition(body) else None


# ---- MLflow down ----------------------------------------------------------------------------------
def mlflow_down(ctx: Context, *, down_s: float = 15.0, concurrency: int = 8, timeout_s: float = 300) -> ScenarioResult:
    """Kill the registry under load, keep it down `down_s`, restart it on the same port and database."""
    res = ScenarioResult("mlflow_down")
    root = ctx.work / "mlflow_down"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    backend = f"sqlite:///{root / 'mlflow.db'}"
    start = lambda: start_mlflow(backend, root / "artifacts", root / "mlflow.log", port)  # noqa: E731
    server = start()
    try:
        name = unique("chaos-mlflow")
        register(server.url, name, seed=1)
        v2 = register(server.url, name, seed=2, alias=None)
        api_state = root / "api"
        with serve(server.url, name, api_state, {"MLOPS_SERVING__RELOAD_INTERVAL_S": "1"}) as api:
            load = Load(api.url, 10**6, concurrency, timeout_s, example_records())
            thread = load.start()
            try:
                res.expect(api.ready()["registry_reachable"] is True, "registry not reachable before the fault")
                wait_until(lambda: load.sent > 100, 30)
                _kill(server)
                killed_at, sent_at_kill = time.monotonic(), load.sent
                degraded = wait_until(lambda: _ready_when(api, lambda b: b["registry_reachable"] is False), 30)
                res.detail["degraded_after_s"] = round(time.monotonic() - killed_at, 1)
                res.detail["ready_while_down"] = degraded
                if res.expect(degraded is not None, "/ready never reported the registry unreachable"):
                    assert degraded is not None
                    res.expect(degraded["status"] == 200 and degraded["ready"] is True, "not ready while down")
                    res.expect("unreachable" in (degraded.get("detail") or ""), "/ready detail does not say why")
                    res.expect(degraded["model_version"] == "1", "the champion changed while the registry was down")
                time.sleep(max(0.0, down_s - (time.monotonic() - killed_at)))
                res.detail["requests_while_down"] = load.sent - sent_at_kill
                res.detail["down_s"] = round(time.monotonic() - killed_at, 1)
                server = start()
                back_at = time.monotonic()
                set_champion(server.url, name, v2)  # proves the watcher is polling again, not just alive
                recovered = wait_until(
                    lambda: _ready_when(api, lambda b: b["registry_reachable"] and b["model_version"] == v2), 60
                )
                res.detail["recovered_after_s"] = round(time.monotonic() - back_at, 1) if recovered else None
                res.expect(recovered is not None, f"the watcher did not load v{v2} after the registry returned")
                time.sleep(1.0)
            finally:
                load.stop.set()
                thread.join(60)
            replies = load.replies
            res.requests, res.failures = len(replies), sum(not r.ok for r in replies)
            res.detail["load"] = load_summary(replies)
            res.rows_lost, res.detail["log"] = lost_rows(_sqlite_log(api_state), replies, 30)
            res.expect(res.requests > 0, "no request was sent")
    finally:
        server.stop()
    return res


# ---- prediction store down ------------------------------------------------------------------------
def prediction_store_down(
    ctx: Context, *, down_s: float = 15.0, concurrency: int = 8, timeout_s: float = 300
) -> ScenarioResult:
    res = ScenarioResult("prediction_store_down")
    root = ctx.work / "prediction_store_down"
    root.mkdir(parents=True, exist_ok=True)
    name = unique("chaos-store")
    register(ctx.tracking_uri, name, seed=1)
    with pg_database("chaos_store") as url:
        env = {"MLOPS_PREDICTION_LOG_URL": url, "MLOPS_SERVING__LOG_RETRY_S": "0.5"}
        with serve(ctx.tracking_uri, name, root / "api", env) as api:
            load = Load(api.url, 10**6, concurrency, timeout_s, example_records())
            thread = load.start()
            try:
                wait_until(lambda: load.sent > 200, 30)
                pg_take_down(url)
                down_at, sent_at_down = time.monotonic(), load.sent
                spooled = wait_until(lambda: api.metric("serving_prediction_log_rows_total", 'outcome="spooled"'), 30)
                res.expect(bool(spooled), "the service never noticed the store was down (nothing spooled)")
                time.sleep(max(0.0, down_s - (time.monotonic() - down_at)))
                res.detail["down_s"] = round(time.monotonic() - down_at, 1)
                res.detail["requests_while_down"] = load.sent - sent_at_down
                pg_bring_back(url)
                time.sleep(3.0)  # traffic after the return, while the spool replays
            finally:
                load.stop.set()
                thread.join(60)
            replies = load.replies
            res.requests, res.failures = len(replies), sum(not r.ok for r in replies)
            res.detail["load"] = load_summary(replies)
            res.rows_lost, res.detail["log"] = lost_rows(url, replies, 60)
            res.detail["rows_spooled"] = api.metric("serving_prediction_log_rows_total", 'outcome="spooled"')
            res.detail["rows_replayed"] = api.metric("serving_prediction_log_rows_total", 'outcome="replayed"')
            spool = api.state / "serving" / "spool"
            leftovers = [p.name for p in spool.glob("*.jsonl") if p.stat().st_size] if spool.exists() else []
            res.expect(not leftovers, f"spool not drained: {leftovers}")
            res.expect(res.requests > 0, "no request was sent")
    return res


# ---- corrupt batch at the source --------------------------------------------------------------------
def _raw_ids(data_dir: Path, id_col: str) -> list[str]:
    files = sorted((data_dir / "raw").glob("date=*/part-*.parquet"))
    return [str(x) for f in files for x in pd.read_parquet(f, columns=[id_col])[id_col]]


def _quarantine_counts(data_dir: Path, id_col: str) -> dict[str, int]:
    """How many quarantine entries each id has, over every run's quarantine file."""
    counts: dict[str, int] = {}
    for f in (data_dir / "quarantine").glob("*.parquet"):
        for x in pd.read_parquet(f, columns=[id_col])[id_col]:
            counts[str(x)] = counts.get(str(x), 0) + 1
    return counts


def _manifests(data_dir: Path) -> list[dict[str, Any]]:
    paths = sorted((data_dir / "manifests").glob("collect-*.json"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in paths]


def _watermark(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / "state" / "watermark.json"
    return (
        {k: v for k, v in json.loads(path.read_text()).items() if k in ("timestamp", "id")} if path.exists() else None
    )


def _add_rows_without_a_usable_time(url: str, table: str, id_col: str, ts_col: str, n: int = 6) -> list[str]:
    """Copies of existing rows with a NULL or unparseable timestamp (SQLite stores what it is given)."""
    engine = engine_for(url)
    try:
        rows = pd.read_sql(f"SELECT * FROM {table} LIMIT {n}", engine)
        rows[id_col] = [f"no-time-{i}" for i in range(len(rows))]
        rows[ts_col] = [None if i % 2 else "not a time" for i in range(len(rows))]
        rows.to_sql(table, engine, if_exists="append", index=False)
    finally:
        engine.dispose()
    return [str(i) for i in rows[id_col]]


def _newest_valid_time(url: str, table: str, ts_col: str) -> str:
    engine = engine_for(url)
    try:
        times = pd.read_sql(f"SELECT {ts_col} FROM {table}", engine)[ts_col]
    finally:
        engine.dispose()
    return str(pd.to_datetime(times, errors="coerce", format="mixed").max().isoformat())


def corrupt_batch(ctx: Context, *, rows_per_day: int = 300) -> ScenarioResult:
    from core.data.collection import CollectionError, run_collection
    from demo.simulator import roles, simulate, write_warehouse

    res = ScenarioResult("corrupt_batch")
    root = ctx.work / "corrupt_batch"
    root.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{root / 'warehouse.db'}"
    with env_vars({"MLOPS_STATE_DIR": str(root / "state"), "MLOPS_WAREHOUSE_URL": url, "MLOPS_ENVIRONMENT": "test"}):
        settings = get_settings()
        contract, data = settings.contract, settings.data_dir
        ts_col, id_col = roles(contract)
        write_warehouse(url, days=6, rows_per_day=rows_per_day, contract=contract)
        first = run_collection(settings)
        res.expect(first["status"] == "succeeded", f"clean batch not collected: {first['status']}")
        mark, raw_before = _watermark(data), _raw_ids(data, id_col)

        # ~9% faulty rows (nulls, wrong types, out of range) in 14 new days: above max_bad_share 5%.
        write_warehouse(url, days=14, rows_per_day=rows_per_day, scenario="data_quality", contract=contract)
        refused: str | None = None
        try:
            run_collection(settings)
        except CollectionError as exc:
            refused = str(exc)
        res.expect(refused is not None, "a batch above max_bad_share was accepted")
        failed = _manifests(data)[-1]
        rows = failed["rows"]
        res.expect(failed["status"] == "failed", "the refused run's manifest does not say failed")
        res.expect(rows["loaded"] + rows["quarantined"] == rows["pulled"], f"accounting broke: {rows}")
        res.expect(_watermark(data) == mark, "the watermark moved past a refused batch")
        res.expect(_raw_ids(data, id_col) == raw_before, "rows of a refused batch were published")
        reasons: dict[str, int] = {}
        if res.expect(bool(failed["quarantine_file"]), "no quarantine file for the faulty rows"):
            q = pd.read_parquet(data / failed["quarantine_file"])
            res.expect(len(q) == rows["quarantined"] > 0, "quarantine file does not hold every faulty row")
            res.expect(bool(q["_reason"].notna().all()), "quarantined rows without a reason")
            reasons = {str(k): int(v) for k, v in q["_reason"].str.split(":").str[0].value_counts().items()}
        res.detail["refused"] = {"rows": rows, "fault_counts": failed["fault_counts"], "reasons_by_column": reasons}

        # Taken again with a higher threshold: valid rows loaded, faulty ones quarantined.
        taken = run_collection(settings, max_bad_share=0.5)
        rows = taken["rows"]
        res.expect(taken["status"] == "succeeded", "the batch was not taken with a higher threshold")
        res.expect(rows["loaded"] + rows["quarantined"] == rows["pulled"], f"accounting broke: {rows}")
        res.expect(_watermark(data) != mark, "the watermark did not move after a successful run")
        res.detail["taken"] = {"rows": rows}

        # Rows whose timestamp is NULL or not a time: no window can hold them. They must be counted and
        # quarantined (once each), never dropped unseen, and must not stop the valid rows around them.
        write_warehouse(url, days=2, rows_per_day=rows_per_day, contract=contract)
        mark = _watermark(data)
        no_time = _add_rows_without_a_usable_time(url, settings.source.table, id_col, ts_col)
        blocked = ""
        try:
            third = run_collection(settings, max_bad_share=0.5)  # 0.5: the tail of the faulty days comes too
        except Exception as exc:  # e.g. a text timestamp taken for the source's clock
            blocked = f"{type(exc).__name__}: {exc}"
            res.expect(_watermark(data) == mark, "the watermark moved in a run that failed")
            # Go on with an explicit clock, so that the checks below still measure what would be lost.
            third = run_collection(
                settings, as_of=_newest_valid_time(url, settings.source.table, ts_col), max_bad_share=0.5
            )
        res.expect(not blocked, f"rows without a usable time stopped collection: {blocked[:200]}")
        res.expect(third["status"] == "succeeded", "valid rows next to unusable timestamps were not collected")
        reported = int(third["unusable_timestamps"] or 0)
        res.expect(reported == len(no_time), f"{len(no_time)} rows without a usable time, {reported} reported")
        # Quarantined once each: the refused and the accepted run above both quarantine the faulty rows
        # of the same window (by design), so "once" is checked for these rows only.
        times = _quarantine_counts(data, id_col)
        unquarantined = [i for i in no_time if times.get(i, 0) == 0]
        res.expect(not unquarantined, f"rows without a usable time not quarantined: {unquarantined}")
        res.expect(all(times.get(i, 0) <= 1 for i in no_time), "a row without a usable time quarantined twice")
        res.detail["unusable_timestamps"] = {
            "injected": len(no_time),
            "reported_in_manifest": reported,
            "quarantined": sum(times.get(i, 0) > 0 for i in no_time),
            "run_failed_first": blocked[:300] or None,
            "rows": third["rows"],
        }

        # Nothing silently lost: every source row up to the watermark is loaded or quarantined, once.
        engine = engine_for(url)
        try:
            source = pd.read_sql(f"SELECT {id_col}, {ts_col} FROM {settings.source.table}", engine)
        finally:
            engine.dispose()
        until = pd.Timestamp(_watermark(data)["timestamp"])  # type: ignore[index]
        ts = pd.to_datetime(source[ts_col], errors="coerce", format="mixed")
        due = set(source.loc[ts <= until, id_col].astype(str))
        raw = _raw_ids(data, id_col)
        res.expect(len(raw) == len(set(raw)), "a row was published twice")
        # Lost: due rows neither loaded nor quarantined, and rows without a usable time left unquarantined.
        res.rows_lost = len(due - set(raw) - set(times)) + len(unquarantined)
        res.detail["source_rows_due"] = len(due)
        res.expect(int(ts.isna().sum()) == len(no_time), "unexpected unusable timestamps at the source")

    # A schema-broken file: a contract column missing. Refused before any row is read.
    csv_dir = root / "csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    frame = simulate(days=2, rows_per_day=100, as_of="2026-02-01")
    frame.drop(columns=["channel"]).to_csv(csv_dir / "batch.csv", index=False)
    csv_env = {
        "MLOPS_STATE_DIR": str(root / "state-csv"),
        "MLOPS_SOURCE__KIND": "csv",
        "MLOPS_SOURCE__PATH": str(csv_dir / "*.csv"),
        "MLOPS_ENVIRONMENT": "test",
    }
    with env_vars(csv_env):
        settings = get_settings()
        message = ""
        try:
            run_collection(settings, as_of="2026-12-31")
        except CollectionError as exc:
            message = str(exc)
        res.expect("channel" in message, f"a missing column was not refused by name: {message!r}")
        manifests = _manifests(settings.data_dir)
        res.expect(bool(manifests) and manifests[-1]["status"] == "failed", "no failed manifest for the schema break")
        res.expect(_watermark(settings.data_dir) is None, "the watermark moved on a schema break")
        res.expect(not _raw_ids(settings.data_dir, id_col), "rows published despite the schema break")
        res.detail["schema_break"] = message[:300]

        # An undecodable file next to a valid one: the run must fail loudly and publish nothing.
        frame.to_csv(csv_dir / "batch.csv", index=False)
        (csv_dir / "garbled.csv").write_bytes(b'\x00\x01garbage\xff\xfe\n1,2,3\n"unterminated')
        error = ""
        try:
            run_collection(settings, as_of="2026-12-31")
        except Exception as exc:  # whatever it raises, it must raise
            error = f"{type(exc).__name__}: {exc}"
        res.expect(bool(error), "an undecodable source file was collected without an error")
        res.expect(_watermark(settings.data_dir) is None, "the watermark moved past an undecodable file")
        res.expect(not _raw_ids(settings.data_dir, id_col), "rows published from a run that failed")
        after = _manifests(settings.data_dir)
        res.detail["undecodable_file"] = {
            "error": error[:300],
            # Known gap (reported): this failure happens before collection writes a manifest or a
            # quarantine file, so the only record of it is the raised error (and the Prefect run).
            "manifest_written": len(after) > len(manifests),
            "error_names_the_file": "garbled.csv" in error,
        }
    return res


# ---- champion swaps under load ----------------------------------------------------------------------
def _allowed(reply: Reply, order: list[str], swaps: list[dict[str, float]]) -> bool:
    """Whether `reply.version` could have been the API's model at some moment of the request.

    Version k (0-based in `order`) can serve from when the alias was set to it (or from the start
    for the first) until the reload that moved the API to version k+1 returned (or the end). The API
    may swap earlier through its own poll, never before the alias moved and never after that reload.
    """
    if reply.version not in order:
        return False
    k = order.index(reply.version)
    begins = swaps[k - 1]["alias_set"] if k > 0 else float("-inf")
    ends = swaps[k]["reload_done"] if k < len(swaps) else float("inf")
    return reply.ended >= begins and reply.started <= ends


def swap_under_load(
    ctx: Context,
    *,
    requests: int = 20_000,
    concurrency: int = 32,
    swaps: int = 3,
    workers: int = 1,
    timeout_s: float = 900,
) -> ScenarioResult:
    """`requests` POST /predict (one or three records each) at `concurrency` while the champion alias
    moves `swaps` times (at evenly spaced points of the run), each move followed by POST /admin/reload;
    the service's own watcher polls every 2 s as well, so either path may swap first.

    A response carries one model_version. "Never mixes versions" is checked three ways:
    - every row the prediction log holds for a response's request ids names that response's version
      (so the records of a multi-record request were all predicted by one model);
    - the version was the serving champion at some moment of the request's lifetime (`_allowed`);
    - on each client connection the versions never go back (v1 ... v2 ... v3, never v3 then v2);
    - and each connection sees at most one change per alias move (with several workers: they switch together).
    """
    res = ScenarioResult("swap_under_load" if workers == 1 else f"swap_under_load_{workers}_workers")
    root = ctx.work / f"{res.name}-{time.monotonic_ns()}"  # a fresh state per run (--repeat)
    root.mkdir(parents=True, exist_ok=True)
    name = unique("chaos-swap")
    order = [register(ctx.tracking_uri, name, seed=1)]
    order += [register(ctx.tracking_uri, name, seed=k + 2, alias=None) for k in range(swaps)]
    api_state = root / "api"
    env = {"MLOPS_SERVING__RELOAD_INTERVAL_S": "2", "MLOPS_SERVING__WORKERS": str(workers)}
    with serve(ctx.tracking_uri, name, api_state, env) as api:
        points = [requests * (k + 1) // (swaps + 1) for k in range(swaps)]
        load = Load(api.url, requests, concurrency, timeout_s, example_records())
        load.milestones = {p: threading.Event() for p in points}
        log: list[dict[str, Any]] = []
        errors: list[str] = []

        def swapper() -> None:
            for k, point in enumerate(points):
                if not load.milestones[point].wait(timeout_s) or load.stop.is_set():
                    errors.append(f"swap {k + 1} never reached its point ({point} requests sent)")
                    return
                alias_set = time.monotonic()
                try:
                    set_champion(ctx.tracking_uri, name, order[k + 1])
                    answer = api.reload()
                except Exception as exc:  # recorded, not lost with the thread
                    errors.append(f"swap {k + 1}: {type(exc).__name__}: {exc}")
                    return
                log.append(
                    {
                        "version": float(order[k + 1]),
                        "at_request": float(point),
                        "alias_set": alias_set,
                        "reload_done": time.monotonic(),
                        "reload_status": float(answer["status"]),
                        "reload_changed": float(bool(answer.get("changed"))),
                        "serving_after": float(answer.get("model_version") or 0),
                    }
                )

        thread = threading.Thread(target=swapper, name="chaos-swapper", daemon=True)
        thread.start()
        try:
            replies = load.run()
        finally:
            load.stop.set()
            for event in load.milestones.values():
                event.set()
            thread.join(120)
        res.requests, res.failures = len(replies), sum(not r.ok for r in replies)
        res.expect(res.requests == requests, f"{res.requests} of {requests} requests sent within {timeout_s:.0f}s")
        res.expect(not errors, "; ".join(errors))
        res.expect(len(log) == swaps, f"{len(log)} of {swaps} swaps happened")
        for entry in log:
            res.expect(entry["reload_status"] == 200, f"/admin/reload answered {entry['reload_status']:.0f}")
            res.expect(entry["serving_after"] == entry["version"], f"not serving v{entry['version']:.0f} after reload")
        summary = load_summary(replies)
        res.expect(set(summary["versions"]) == set(order), f"not every version served: {summary['versions']}")
        outside = [r for r in replies if r.ok and not _allowed(r, order, log)] if len(log) == swaps else []
        res.expect(not outside, f"{len(outside)} responses name a version that was not serving during the request")
        backwards = 0
        for client in range(concurrency):
            seen = [
                order.index(r.version)
                for r in sorted(replies, key=lambda r: r.started)
                if r.client == client and r.ok and r.version in order
            ]
            backwards += sum(b < a for a, b in itertools.pairwise(seen))
        res.expect(backwards == 0, f"{backwards} times a connection got an older version after a newer one")
        changes = version_changes(replies, concurrency)
        res.expect(max(changes) <= swaps, f"a connection saw {max(changes)} version changes for {swaps} alias moves")
        res.rows_lost, res.detail["log"] = lost_rows(_sqlite_log(api_state), replies, 60)
        res.expect(
            res.detail["log"]["rows_with_another_version"] == 0, "logged rows name another version than their response"
        )
        t0 = min((r.started for r in replies), default=0.0)
        res.detail |= {
            "load": summary,
            "concurrency": concurrency,
            "swaps": [
                {
                    "version": f"{e['version']:.0f}",
                    "at_request": int(e["at_request"]),
                    "alias_set_s": round(e["alias_set"] - t0, 2),
                    "reload_done_s": round(e["reload_done"] - t0, 2),
                    "swapped_by_reload": bool(e["reload_changed"]),  # False: the watcher's poll was first
                }
                for e in log
            ],
            "responses_outside_their_window": len(outside),
            "version_went_back_on_a_connection": backwards,
            "workers": workers,
            "version_changes_per_connection_max": max(changes),
            "version_changes_all_connections": sum(changes),
        }
    return res


# ---- running them -------------------------------------------------------------------------------------
Scenario = Callable[..., ScenarioResult]


def run_scenario(name: str, fn: Scenario, ctx: Context, **params: Any) -> ScenarioResult:
    say(f"{name} ...")
    started = time.monotonic()
    try:
        result = fn(ctx, **params)
    except Exception as exc:  # a scenario that cannot run is a failed scenario, with the reason
        result = ScenarioResult(name)
        result.problems.append(f"could not run: {type(exc).__name__}: {str(exc)[:500]}")
        result.detail["traceback"] = traceback.format_exc()[-3000:]
    result.seconds = time.monotonic() - started
    result.finish()
    say(f"{name}: {'passed' if result.passed else 'FAILED ' + '; '.join(result.problems)} ({result.seconds:.0f}s)")
    return result


def scenarios(args: argparse.Namespace) -> dict[str, tuple[Scenario, dict[str, Any]]]:
    from benchmarks import chaos_prefect, chaos_rollout

    return {
        "mlflow_down": (mlflow_down, {"down_s": args.down_s}),
        "prediction_store_down": (prediction_store_down, {"down_s": args.down_s}),
        "corrupt_batch": (corrupt_batch, {}),
        "retraining_killed": (chaos_prefect.retraining_killed, {}),
        "prefect_restart": (chaos_prefect.prefect_restart, {}),
        "swap_under_load": (swap_under_load, {"requests": args.requests, "concurrency": args.concurrency}),
        "swap_under_load_2_workers": (
            swap_under_load,
            {"requests": args.requests, "concurrency": args.concurrency, "workers": 2},
        ),
        "canary_rolled_back": (chaos_rollout.canary_rolled_back, {}),
        "webhook_lost": (chaos_rollout.webhook_lost, {}),
        "worker_killed": (chaos_rollout.worker_killed, {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--down-s", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=1, help="run the chosen scenarios this many times")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLOPS_ENVIRONMENT", "test")
    table = scenarios(args)
    chosen = args.only or list(table)
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {list(table)}")
    work = WORK / time.strftime("%Y%m%dT%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    started, started_at = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    say("starting the shared MLflow server ...")
    shared = start_mlflow(f"sqlite:///{work / 'mlflow.db'}", work / "artifacts", work / "mlflow.log")
    results = []
    try:
        ctx = Context(work, shared.url)
        for run in range(1, args.repeat + 1):
            for name in chosen:
                fn, params = table[name]
                result = run_scenario(name, fn, ctx, **params)
                if args.repeat > 1:
                    result.detail["run"] = run
                results.append(result)
    finally:
        shared.stop()
    report = {
        "scenarios": [r.to_dict() for r in results],
        "totals": {
            "scenarios": len(results),
            "passed": sum(r.passed for r in results),
            "requests": sum(r.requests for r in results),
            "failures": sum(r.failures for r in results),
            "rows_lost": sum(r.rows_lost for r in results),
            "seconds": round(time.monotonic() - started, 1),
        },
        "machine": {"cpus": os.cpu_count()},
        "started": started_at,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_result(report, args.out)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
