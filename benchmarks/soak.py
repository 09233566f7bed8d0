"""`make soak`: 1,000,000 requests at concurrency 16 with a swap every 100,000; does memory stay flat?

The API runs as `python -m serving` with the default settings (workers, prediction log flush) against
its own MLflow server, two registered versions of the example model. The load is benchmarks/loadgen.py
(keep-alive connections, one pre-encoded record) in segments of 100,000 requests; after each segment
the champion alias flips (v1 <-> v2) and POST /admin/reload swaps it. After each segment the resident
memory of every worker process is read from /proc. Passes when no request failed, every answered
prediction is a row of the prediction log, and each worker's RSS grew by less than 10% from the end of
the first segment to the end.

Writes benchmarks/results/soak.json: requests, errors, rss_growth (the largest of the workers), the RSS
series per worker, requests per second, swaps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from benchmarks.chaos_support import ADMIN_KEY, register, serve, set_champion, unique, worker_pids
from benchmarks.loadgen import build_request, run_load
from benchmarks.record import write_result
from core.databases import engine_for
from core.servers import start_mlflow
from core.settings import PROJECT_ROOT, get_settings

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "soak.json"
RSS_GROWTH_LIMIT = 0.10


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def logged_rows(url: str) -> int:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one())
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--swap-every", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if (args.requests, args.swap_every, args.concurrency) != (1_000_000, 100_000, 16):
        print(f"NOTE: not the issue's soak: {args.requests} requests, a swap every {args.swap_every}, "
              f"concurrency {args.concurrency}")  # fmt: skip

    import asyncio

    settings = get_settings()
    defaults = settings.serving
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    mlflow_server = start_mlflow(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "mlflow.log")
    try:
        name = unique("soak")
        versions = [register(mlflow_server.url, name, seed=1), register(mlflow_server.url, name, seed=2, alias=None)]
        # The default flush interval, not chaos_support.serve's short one.
        env = {"MLOPS_SERVING__LOG_FLUSH_S": str(defaults.log_flush_s)}
        with serve(mlflow_server.url, name, root / "api", env) as api:
            workers = worker_pids(api.pid) or [api.pid]
            host, port = api.url.removeprefix("http://").split(":")
            record = {c: settings.contract.column(c).example for c in settings.contract.input_columns}
            request = build_request(host, int(port), "/predict", json.dumps(record).encode())
            series: dict[str, list[float]] = {str(pid): [] for pid in workers}
            segments: list[dict[str, Any]] = []
            total = ok = errors = 0
            started = time.perf_counter()
            serving = versions[0]
            while total < args.requests:
                n = min(args.swap_every, args.requests - total)
                result = asyncio.run(run_load(host, int(port), request, args.concurrency, 3600, max_requests=n))
                summary = result.summary()
                total += len(result.latencies_s) + result.errors
                ok += result.ok
                errors += int(summary["failed"])
                for pid in workers:
                    series[str(pid)].append(round(rss_mb(pid), 1))
                segment: dict[str, Any] = {
                    "requests": total,
                    "rps": round(summary["rps"], 1),
                    "p99_ms": round(summary["p99_ms"], 2),
                }
                if total < args.requests:
                    serving = versions[1] if serving == versions[0] else versions[0]
                    set_champion(mlflow_server.url, name, serving)
                    reply = httpx.post(f"{api.url}/admin/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=120)
                    swapped = reply.status_code == 200 and reply.json().get("model_version") == serving
                    segment["swapped_to"] = serving if swapped else f"failed: {reply.status_code} {reply.text[:200]}"
                segments.append(segment)
                print(f"{total:>9,} requests, {errors} errors, RSS {[s[-1] for s in series.values()]} MB, {segment}")
            elapsed = time.perf_counter() - started
            time.sleep(defaults.log_flush_s * 3 + 1)  # the writer's last flush
            rows = logged_rows(f"sqlite:///{root / 'api' / 'predictions.db'}")
        growth = {pid: (s[-1] - s[0]) / s[0] for pid, s in series.items()}
        swaps_failed = [s for s in segments if str(s.get("swapped_to", "")).startswith("failed")]
        result_doc: dict[str, Any] = {
            "requests": total,
            "ok": ok,
            "errors": errors,
            "logged_rows": rows,
            "rss_growth": round(max(growth.values()), 4),
            "rss_growth_limit": RSS_GROWTH_LIMIT,
            "rss_mb_per_worker": series,
            "rps": round(total / elapsed, 1),
            "seconds": round(elapsed, 1),
            "swaps": sum("swapped_to" in s for s in segments) - len(swaps_failed),
            "swaps_failed": swaps_failed,
            "segments": segments,
            "settings": {
                "workers": defaults.workers,
                "log_flush_s": defaults.log_flush_s,
                "concurrency": args.concurrency,
                "swap_every": args.swap_every,
            },
        }
    finally:
        mlflow_server.stop()
    passed = errors == 0 and rows == ok and not swaps_failed and result_doc["rss_growth"] < RSS_GROWTH_LIMIT
    result_doc["passed"] = passed
    write_result(result_doc, args.out)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
