"""Chaos scenarios of the rollout: a bad canary under load, a lost registry webhook, a worker killed -9.

Each runs the real serve command with 2 workers against the run's MLflow server, under keep-alive load
from `chaos_support.Load`, with the service's default settings unless a scenario says otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.chaos_support import (
    ADMIN_KEY,
    Context,
    Load,
    ScenarioResult,
    example_records,
    load_summary,
    lost_rows,
    register,
    say,
    serve,
    set_champion,
    unique,
    version_changes,
    wait_until,
    worker_pids,
)
from core.servers import free_port
from core.settings import get_settings

WORKERS = 2
ADMIN = {"X-API-Key": ADMIN_KEY}


def _varied_records(n: int = 600) -> list[dict[str, Any]]:
    """Simulated transactions, so that the models' scores spread as on real traffic (the canary's score
    distribution is judged against the champion's on the same kind of requests)."""
    from demo.simulator import simulate
    from demo.traffic import to_records

    contract = get_settings().contract
    return to_records(simulate(n, seed=7, contract=contract).dropna(), contract)


def _log(state: Path) -> str:
    return f"sqlite:///{state / 'predictions.db'}"


# ---- a bad canary under load ----------------------------------------------------------------------
def canary_rolled_back(
    ctx: Context, *, requests: int = 30_000, concurrency: int = 16, timeout_s: float = 300
) -> ScenarioResult:
    """Champion v1 and a bad challenger v2 (a logistic regression so regularised that every score is the
    base rate). Under load of simulated transactions, the canary is switched on at share 0.5 through PUT
    /admin/rollout; with the default rollback limits, the first worker to see the canary's score
    distribution cross the limit stops it (the other follows the shared state), the decision is recorded,
    no request fails, and from a second after the rollback no response comes from v2."""
    res = ScenarioResult("canary_rolled_back")
    root = ctx.work / "canary_rolled_back"
    name = unique("chaos-canary")
    register(ctx.tracking_uri, name, seed=1)
    register(ctx.tracking_uri, name, seed=2, alias="challenger", params={"C": 1e-9})
    env = {"MLOPS_SERVING__WORKERS": str(WORKERS)}
    with serve(ctx.tracking_uri, name, root / "api", env) as api:
        load = Load(api.url, requests, concurrency, timeout_s, _varied_records())
        thread = load.start()
        switched_at = stopped_at = None
        try:
            wait_until(lambda: load.sent > 2_000, 60)
            r = httpx.put(f"{api.url}/admin/rollout", json={"mode": "canary", "canary_share": 0.5}, headers=ADMIN)
            switched_at = time.monotonic()
            res.expect(r.status_code == 200, f"PUT /admin/rollout answered {r.status_code}: {r.text[:300]}")

            def rolled_back() -> dict[str, Any] | None:
                body = httpx.get(f"{api.url}/admin/rollout", headers=ADMIN, timeout=10).json()
                return body if body["mode"] == "off" and body.get("last_decision") else None

            status = wait_until(rolled_back, 120, interval=0.1)
            stopped_at = time.monotonic()
            res.expect(status is not None, "the canary was never rolled back")
            time.sleep(3.0)  # the load goes on after the rollback: no response may come from v2 now
        finally:
            load.stop.set()
            thread.join(60)
        replies = load.replies
        res.requests, res.failures = len(replies), sum(not r.ok for r in replies)
        canary = [r for r in replies if r.ok and r.version == "2"]
        res.expect(bool(canary), "the canary never answered")
        decisions_file = root / "api" / "serving" / "rollout-decisions.jsonl"
        lines = decisions_file.read_text().splitlines() if decisions_file.exists() else []
        decisions = [json.loads(line) for line in lines if line.strip()]
        res.expect(
            bool(decisions) and all(d["decision"] == "rollback" and "score_psi" in d["limits"] for d in decisions),
            f"decisions: {decisions}",
        )
        late = [r for r in canary if stopped_at is not None and r.started > stopped_at + 1.0]
        res.expect(not late, f"{len(late)} answers from v2 sent more than 1 s after the rollback was visible")
        res.rows_lost, res.detail["log"] = lost_rows(_log(root / "api"), replies, 30)
        limits = get_settings().serving.rollout.rollback
        res.detail |= {
            "load": load_summary(replies),
            "workers": WORKERS,
            "concurrency": concurrency,
            "canary_answers": len(canary),
            "min_requests_per_worker": limits.min_requests,
            "rolled_back_after_s": round(stopped_at - switched_at, 2) if stopped_at and switched_at else None,
            "last_canary_answer_after_rollback_s": round(max(r.ended for r in canary) - stopped_at, 2)
            if canary and stopped_at
            else None,
            "decisions": [{k: d[k] for k in ("reason", "limits", "challenger_version")} for d in decisions],
        }
    return res


# ---- a lost webhook -------------------------------------------------------------------------------
def webhook_lost(
    ctx: Context, *, requests: int = 10**6, concurrency: int = 16, timeout_s: float = 300
) -> ScenarioResult:
    """The registry's webhook points at an address nobody listens on: the alias move's notice is lost.
    With the default poll interval, the workers' poll must catch up (both workers on the new version, one
    version change per connection, no failed request)."""
    import mlflow

    res = ScenarioResult("webhook_lost")
    root = ctx.work / "webhook_lost"
    name = unique("chaos-webhook")
    register(ctx.tracking_uri, name, seed=1)
    v2 = register(ctx.tracking_uri, name, seed=2, alias=None)
    client = mlflow.MlflowClient(tracking_uri=ctx.tracking_uri)
    nowhere = f"http://127.0.0.1:{free_port()}/webhooks/mlflow"
    hook = client.create_webhook(
        name=f"{name}-serving",
        url=nowhere,
        events=["model_version_alias.created"],
        secret="chaos-webhook-secret",
    )
    interval = get_settings().serving.reload_interval_s
    env = {"MLOPS_SERVING__WORKERS": str(WORKERS), "MLOPS_SERVING__WEBHOOK_SECRET": "chaos-webhook-secret"}
    try:
        with serve(ctx.tracking_uri, name, root / "api", env) as api:
            load = Load(api.url, requests, concurrency, timeout_s, example_records())
            thread = load.start()
            moved_at = None
            try:
                wait_until(lambda: load.sent > 2_000, 60)
                set_champion(ctx.tracking_uri, name, v2)
                moved_at = time.monotonic()
                caught_up = wait_until(
                    lambda: {api.ready()["model_version"] for _ in range(8)} == {v2}, interval + 30, interval=0.5
                )
                res.expect(caught_up is not None, f"v{v2} not served by every worker within {interval + 30:.0f}s")
                time.sleep(2.0)
            finally:
                load.stop.set()
                thread.join(60)
            replies = load.replies
            res.requests, res.failures = len(replies), sum(not r.ok for r in replies)
            new = [r for r in replies if r.ok and r.version == v2]
            first_new = min((r.ended for r in new), default=None)
            changes = version_changes(replies, concurrency)
            res.expect(max(changes) <= 1, f"connections saw the version change up to {max(changes)} times")
            res.expect(bool(new), f"v{v2} never answered")
            res.rows_lost, res.detail["log"] = lost_rows(_log(root / "api"), replies, 30)
            res.detail |= {
                "load": load_summary(replies),
                "workers": WORKERS,
                "reload_interval_s": interval,
                "webhook_url": nowhere,
                "first_new_answer_after_s": round(first_new - moved_at, 2) if first_new and moved_at else None,
                "version_changes_per_connection_max": max(changes),
            }
    finally:
        client.delete_webhook(hook.webhook_id)
    return res


# ---- a worker killed -9 ---------------------------------------------------------------------------
def worker_killed(
    ctx: Context, *, requests: int = 20_000, concurrency: int = 16, timeout_s: float = 300
) -> ScenarioResult:
    """One of the 2 workers is killed with SIGKILL under load. Only requests in flight when it died may
    fail (each started before the kill); every request started after it succeeds; uvicorn starts a new
    worker, and the service answers from both again. Answered predictions whose log rows were still in
    the dead worker's buffer are counted (at most what it answered in the last flush interval)."""
    res = ScenarioResult("worker_killed")
    root = ctx.work / "worker_killed"
    name = unique("chaos-kill")
    register(ctx.tracking_uri, name, seed=1)
    env = {"MLOPS_SERVING__WORKERS": str(WORKERS)}
    flush_s = 0.2  # chaos_support.serve's MLOPS_SERVING__LOG_FLUSH_S
    with serve(ctx.tracking_uri, name, root / "api", env) as api:
        before = worker_pids(api.pid)
        res.expect(len(before) == WORKERS, f"{len(before)} worker processes found, not {WORKERS}")
        load = Load(api.url, requests, concurrency, timeout_s, example_records())
        thread = load.start()
        killed_at = None
        try:
            wait_until(lambda: load.sent > requests // 3, 120)
            victim = before[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            say(f"  killed worker {victim} at request {load.sent}")
            replaced = wait_until(lambda: len(set(worker_pids(api.pid)) - set(before)) == 1, 60)
            res.detail["replaced_after_s"] = round(time.monotonic() - killed_at, 1) if replaced else None
            res.expect(replaced is not None, "uvicorn did not start a new worker")
            thread.join(timeout_s)
        finally:
            load.stop.set()
            thread.join(60)
        after = worker_pids(api.pid)
        replies = load.replies
        res.requests = len(replies)
        failed = [r for r in replies if not r.ok]
        assert killed_at is not None
        after_kill = [r for r in failed if r.started > killed_at]
        in_flight = [r for r in replies if r.started <= killed_at <= r.ended]
        res.expect(not after_kill, f"{len(after_kill)} requests started after the kill failed: {after_kill[:3]}")
        res.expect(len(failed) <= len(in_flight), f"{len(failed)} failed, only {len(in_flight)} were in flight")
        # The failures are the dead worker's requests in flight: accounted for, not lost unseen.
        res.failures = len(after_kill)
        missing, log_detail = lost_rows(_log(root / "api"), replies, 30)
        answered_just_before = sum(
            len(r.ids) for r in replies if r.ok and killed_at - 2 * flush_s <= r.ended <= killed_at
        )
        # Rows still in the dead worker's memory (answered, not yet flushed) die with it: counted as lost,
        # allowed up to what it answered in the last two flush intervals.
        res.rows_lost = missing
        res.rows_lost_allowed = answered_just_before
        res.rows_lost_why = (
            f"answered by the killed worker within its last {2 * flush_s:.1f}s, still in its log buffer "
            f"({answered_just_before} rows answered then by both workers)"
        )
        res.detail |= {
            "load": load_summary(replies),
            "workers_before": before,
            "workers_after": after,
            "in_flight_at_kill": len(in_flight),
            "failed_in_flight": len(failed),
            "failed_errors": sorted({r.error or "" for r in failed})[:5],
            "log_rows_lost_with_the_dead_worker": missing,
            "log_flush_s": flush_s,
            "log": log_detail,
        }
    return res
