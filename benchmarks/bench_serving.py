"""Serving benchmark: this service against `mlflow models serve`, same model, same workers, same load.

    python -m benchmarks.bench_serving [--workers N] [--duration S] [--batch-rows N]

Registers one model in a fresh MLflow server, then measures, in one run:
- cold start: `python -m serving` process start to GET /ready == 200 (model in the registry), median of 3;
- single-record POSTs at concurrency 1 and 16 against both servers (benchmarks.loadgen drives both);
- a batch of `--batch-rows` rows: a Parquet upload to /predict/batch answered as CSV (the headline)
  and as an Arrow stream (mlflow: dataframe_split JSON), plus five back to back (the sustained rate);
- in process: one-row predict time (the floor), and the same batch through the same predict path,
  timed in the same rounds as the service's batches (and back to back, for reference);
- resident memory per worker.
Writes benchmarks/results/serving.json with the figures, the targets and whether each is met.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow as pa

from benchmarks.loadgen import build_request, load, send_once
from benchmarks.record import write_result
from core.servers import HOST, VENV_BIN, free_port, spawn, start_mlflow, stop_process_group, wait_http
from core.settings import PROJECT_ROOT, get_settings

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "serving.json"
WORK = PROJECT_ROOT / "benchmarks" / ".work" / "serving"
MODEL_NAME = "bench-serving"
TARGETS = {
    "throughput_ratio": (">=", 10.0),
    "p50_ratio": (">=", 5.0),
    "batch_vs_inprocess": (">=", 0.5),
    "cold_start_s": ("<=", 5.0),
    "rss_mb": ("<=", 400.0),
}


def _say(msg: str) -> None:
    print(f"[bench-serving {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> float:
    """Seconds until `url` answers 200, polled every 20 ms (finer than wait_http: this is the measurement)."""
    started = time.perf_counter()
    with httpx.Client(timeout=2) as client:
        while time.perf_counter() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
            try:
                if client.get(url).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def _worker_rss_mb(pid: int) -> float:
    """Largest resident set among the worker processes (the process itself when it has no children)."""
    proc = psutil.Process(pid)
    children = [
        c for c in proc.children(recursive=True) if "multiprocessing.resource_tracker" not in " ".join(c.cmdline())
    ]
    procs = children or [proc]
    return max(p.memory_info().rss for p in procs) / 2**20


def _load_phase(port: int, body: bytes, path: str, concurrency: int, duration: float) -> dict[str, float]:
    request = build_request(HOST, port, path, body)
    load(HOST, port, request, concurrency, min(2.0, duration / 3))  # warm-up: connections, caches
    return load(HOST, port, request, concurrency, duration).summary()


def _log_rows_written(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('serving_prediction_log_rows_total{outcome="written"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_written(url: str, at_least: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _log_rows_written(url) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)


def _batch_phase(  # noqa: PLR0917
    port: int, body: bytes, content_type: str, rows: int, in_process: Callable[[], object], rounds: int = 15
) -> dict[str, list[float]]:
    """Seconds per single batch: answered by the service as CSV and as an Arrow stream, and predicted
    in process, the three alternating round by round after a warm-up round, so that machine noise and
    idle-time effects fall on all three alike. The prediction log has stored the previous batch
    before each timed request (its writer shares the service's process and GIL)."""
    url = f"http://{HOST}:{port}"
    times: dict[str, list[float]] = {"csv": [], "arrow": [], "in_process": []}
    requests = {
        fmt: build_request(HOST, port, f"/predict/batch?format={fmt}", body, content_type=content_type)
        for fmt in ("csv", "arrow")
    }
    for i in range(rounds + 1):
        for fmt, request in requests.items():
            written = _log_rows_written(url)
            elapsed, status, answer = send_once(HOST, port, request)
            assert status == 200, f"batch ({fmt}) answered {status}: {answer[:300]!r}"
            if i:  # round 0 warms up
                times[fmt].append(elapsed)
            _wait_written(url, written + rows)
            answered = pa.ipc.open_stream(answer).read_all().num_rows if fmt == "arrow" else answer.count(b"\n") - 1
            assert answered == rows, f"batch ({fmt}) answered {answered} rows for {rows}"
        started = time.perf_counter()
        in_process()
        if i:
            times["in_process"].append(time.perf_counter() - started)
    return times


def _predictor(tracking_uri: str) -> Any:
    """The champion, loaded and compiled the way the service loads it."""
    from core.registry.artefact import load_pipeline
    from serving.model_store import Registry
    from serving.predictor import Predictor

    settings = get_settings()
    registry = Registry(tracking_uri)
    info = registry.alias(MODEL_NAME, "champion")
    target = WORK / "inprocess-model"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    pipeline, metadata = load_pipeline(registry.download(info, target))
    return Predictor.build(
        pipeline,
        settings.contract,
        threshold=metadata.get("threshold"),
        positive_class=metadata.get("positive_class"),
        use_onnx=settings.serving.use_onnx,
        threads=settings.serving.threads_per_worker,
    )


def _floor_and_hot_batches(predictor: Any, record: dict[str, Any], in_process: Callable[[], object]) -> dict[str, Any]:
    """One-row predict time (the floor), and batches back to back (the hot in-process rate)."""
    from serving.predictor import columns_from_records

    contract = get_settings().contract
    records = [record]
    for _ in range(200):
        predictor.predict(columns_from_records(records, contract))
    singles = []
    for _ in range(3000):
        started = time.perf_counter()
        predictor.predict(columns_from_records(records, contract))
        singles.append(time.perf_counter() - started)
    hot = []
    for i in range(16):
        started = time.perf_counter()
        in_process()
        if i:
            hot.append(time.perf_counter() - started)
    return {"floor_ms": statistics.median(singles) * 1000, "hot_batch_s": statistics.median(hot)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=None, help="uvicorn workers for both servers (default: settings)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--family", default="logistic", choices=["logistic", "hist_gradient_boosting"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    # Imported here so that `--help` stays instant.
    import mlflow

    from serving.example_model import register_example_model
    from serving.predictor import columns_from_frame
    from serving.sample import synthetic_frame
    from serving.schemas import build_models

    settings = get_settings()
    workers = args.workers or settings.serving.workers
    contract = settings.contract
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    started_all = time.perf_counter()
    servers: list[int] = []
    try:
        _say("starting an MLflow tracking server")
        tracking = start_mlflow(f"sqlite:///{WORK / 'mlflow.db'}", WORK / "artifacts", WORK / "mlflow.log")
        servers.append(tracking.proc.pid)
        mlflow.set_tracking_uri(tracking.url)
        _say(f"registering a {args.family} model as {MODEL_NAME}@champion")
        version = register_example_model(contract, MODEL_NAME, family=args.family, n_rows=5_000, seed=0)

        record = build_models(contract).example
        port = free_port()
        env = {
            "MLOPS_STATE_DIR": str(WORK / "state"),
            "MLOPS_MLFLOW_TRACKING_URI": tracking.url,
            "MLOPS_MODEL_NAME": MODEL_NAME,
            "MLOPS_SERVING__PORT": str(port),
            "MLOPS_SERVING__WORKERS": str(workers),
            "MLOPS_SERVING_LOG_LEVEL": "warning",
        }
        cmd = [str(VENV_BIN / "python"), "-m", "serving"]
        cold = []
        ours = None
        for i in range(3):
            log = WORK / f"serving-{i}.log"
            proc = spawn("serving", cmd, log, env, cwd=PROJECT_ROOT)
            cold.append(_wait_ready(f"http://{HOST}:{port}/ready", proc, log))
            _say(f"cold start {i + 1}: {cold[-1]:.2f}s")
            if i < 2:
                stop_process_group(proc.pid)
            else:
                ours = proc
        assert ours is not None
        servers.append(ours.pid)
        url = f"http://{HOST}:{port}"
        # The ONNX path is swapped in after readiness; measure what serves once it settled.
        deadline = time.monotonic() + 120
        model: dict[str, Any] = {}
        while time.monotonic() < deadline:
            model = httpx.get(f"{url}/model", timeout=10).json()
            if model["runtime"] != "numpy" or model["fallback_reason"] or not settings.serving.use_onnx:
                break
            time.sleep(0.5)
        _say(f"our service runs on {model.get('runtime')} ({model.get('fallback_reason') or 'no fallback'})")

        mlflow_port = free_port()
        mlflow_log = WORK / "mlflow-serve.log"
        _say(f"starting `mlflow models serve` with {workers} worker(s)")
        mlflow_proc = spawn(
            "mlflow-serve",
            [
                str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
                "--env-manager", "local", "-h", HOST, "-p", str(mlflow_port), "-w", str(workers),
            ],
            mlflow_log,
            # mlflow execs `uvicorn` by name: the venv's bin must be on PATH.
            {"MLFLOW_TRACKING_URI": tracking.url, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
            cwd=PROJECT_ROOT,
        )  # fmt: skip
        servers.append(mlflow_proc.pid)
        wait_http(f"http://{HOST}:{mlflow_port}/ping", 300, mlflow_proc, mlflow_log)

        ours_body = json.dumps(record).encode()
        mlflow_body = json.dumps({"dataframe_records": [record]}).encode()
        a = httpx.post(f"{url}/predict", content=ours_body, headers={"Content-Type": "application/json"}).json()
        b = httpx.post(
            f"http://{HOST}:{mlflow_port}/invocations",
            content=mlflow_body,
            headers={"Content-Type": "application/json"},
        ).json()
        same_label = a["predictions"][0]["prediction"] == b["predictions"][0]
        _say(f"both servers answer; same label: {same_label}")

        load_results: dict[str, dict[str, float]] = {}
        for conc in (1, 16):
            load_results[f"ours_c{conc}"] = _load_phase(port, ours_body, "/predict", conc, args.duration)
            _say(f"ours   c={conc}: {load_results[f'ours_c{conc}']}")
            load_results[f"mlflow_c{conc}"] = _load_phase(mlflow_port, mlflow_body, "/invocations", conc, args.duration)
            _say(f"mlflow c={conc}: {load_results[f'mlflow_c{conc}']}")

        batch = synthetic_frame(contract, args.batch_rows, seed=21)
        parquet = io.BytesIO()
        batch.to_parquet(parquet)
        predictor = _predictor(tracking.url)

        def in_process() -> object:  # what a Python caller holding a DataFrame does
            return predictor.predict(columns_from_frame(batch, contract))

        # The headline is the default CSV output; the Arrow stream is measured alongside.
        batch_times = _batch_phase(
            port, parquet.getvalue(), "application/vnd.apache.parquet", args.batch_rows, in_process
        )
        batch_s = statistics.median(batch_times["csv"])
        arrow_batch_s = statistics.median(batch_times["arrow"])
        inprocess_batch_s = statistics.median(batch_times["in_process"])
        # Also back to back, the writer storing earlier batches meanwhile: the sustained rate.
        upload = build_request(
            HOST, port, "/predict/batch", parquet.getvalue(), content_type="application/vnd.apache.parquet"
        )
        written = _log_rows_written(url)
        started = time.perf_counter()
        for _ in range(5):
            send_once(HOST, port, upload)
        _wait_written(url, written + 5 * args.batch_rows)
        sustained_rows_per_s = 5 * args.batch_rows / (time.perf_counter() - started)
        split = {"dataframe_split": json.loads(batch.to_json(orient="split", index=False, date_format="iso"))}
        mlflow_request = build_request(HOST, mlflow_port, "/invocations", json.dumps(split).encode())
        mlflow_answers = [send_once(HOST, mlflow_port, mlflow_request) for _ in range(4)][1:]  # after a warm-up
        assert all(status == 200 for _, status, _ in mlflow_answers), mlflow_answers[0][2][:300]
        mlflow_batch_s = statistics.median(elapsed for elapsed, _, _ in mlflow_answers)
        _say(f"batch of {args.batch_rows}: {batch_s:.3f}s (Arrow: {arrow_batch_s:.3f}s), mlflow {mlflow_batch_s:.3f}s")

        rss_mb = _worker_rss_mb(ours.pid)
        mlflow_rss_mb = _worker_rss_mb(mlflow_proc.pid)
        inproc = _floor_and_hot_batches(predictor, record, in_process)
        _say(f"in process: batch {inprocess_batch_s:.3f}s, back to back {inproc['hot_batch_s']:.3f}s, {inproc}")
    finally:
        for pid in reversed(servers):
            stop_process_group(pid)

    c1, c16 = load_results["ours_c1"], load_results["ours_c16"]
    m1, m16 = load_results["mlflow_c1"], load_results["mlflow_c16"]
    batch_rows_per_s = args.batch_rows / batch_s
    result: dict[str, Any] = {
        "p50_ms": c1["p50_ms"],
        "p99_ms": c1["p99_ms"],
        "rps": c16["rps"],
        "mlflow_p50_ms": m1["p50_ms"],
        "mlflow_p99_ms": m1["p99_ms"],
        "mlflow_rps": m16["rps"],
        "throughput_ratio": c16["rps"] / m16["rps"],
        "p50_ratio": m1["p50_ms"] / c1["p50_ms"],
        "floor_ms": inproc["floor_ms"],
        "batch_rows_per_s": batch_rows_per_s,
        "inprocess_batch_rows_per_s": args.batch_rows / inprocess_batch_s,
        "cold_start_s": statistics.median(cold),
        "rss_mb": rss_mb,
    }
    derived = {**result, "batch_vs_inprocess": inprocess_batch_s / batch_s}
    result["targets"] = {
        k: {"target": f"{op} {v:g}", "value": derived[k], "met": derived[k] >= v if op == ">=" else derived[k] <= v}
        for k, (op, v) in TARGETS.items()
    }
    result["details"] = {
        "model": {"name": MODEL_NAME, "version": version, "family": args.family, "runtime": model.get("runtime")},
        "inprocess_runtime": predictor.runtime,
        "workers": workers,
        "duration_s_per_phase": args.duration,
        "batch_rows": args.batch_rows,
        "batch_format": "parquet upload -> CSV stream (ours); dataframe_split JSON (mlflow)",
        "arrow_batch_rows_per_s": args.batch_rows / arrow_batch_s,
        "arrow_batch_vs_inprocess": inprocess_batch_s / arrow_batch_s,
        "inprocess_back_to_back_rows_per_s": args.batch_rows / inproc["hot_batch_s"],
        "batch_vs_inprocess_back_to_back": inproc["hot_batch_s"] / batch_s,
        "ours_p50_ms_c16": c16["p50_ms"],
        "ours_p99_ms_c16": c16["p99_ms"],
        "ours_rps_c1": c1["rps"],
        "mlflow_p50_ms_c16": m16["p50_ms"],
        "mlflow_p99_ms_c16": m16["p99_ms"],
        "mlflow_rps_c1": m1["rps"],
        "failed_requests": {k: v["failed"] for k, v in load_results.items()},
        "batch_timing": "median of 15 single batches each: service CSV, service Arrow and in-process alternating "
        "round by round after a warm-up round; the prediction log drained before each service batch. "
        "inprocess_back_to_back: 15 in-process batches in a row",
        "batch_times_s": batch_times,
        "sustained_batch_rows_per_s_with_logging": sustained_rows_per_s,
        "mlflow_batch_rows_per_s": args.batch_rows / mlflow_batch_s,
        "mlflow_rss_mb": mlflow_rss_mb,
        "cold_starts_s": cold,
        "same_label_as_mlflow": same_label,
        "load_generator": "benchmarks.loadgen (asyncio keep-alive connections, one process), every phase and "
        "both servers; batches one request at a time",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "total_s": time.perf_counter() - started_all,
    }
    write_result(result, args.out, shown=[k for k in result if k != "details"])
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
