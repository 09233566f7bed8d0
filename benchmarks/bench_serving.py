"""Serving benchmark: this service against `mlflow models serve`, same model, same workers, same load.

    python -m benchmarks.bench_serving [--families a,b,...] [--workers N] [--duration S] [--batch-rows N]

For every model family the training flow can register (all five by default; the fraud contract's
binary task), registers that family's model (core.modeling.families' default params, 5,000 rows) in a
fresh MLflow server, serves it with this service and with `mlflow models serve`, and drives both with
single-record POSTs at concurrency 1 (p50) and 16 (throughput), benchmarks.loadgen for both. Both servers
get the same workers and the same BLAS/OpenMP threads per worker.

The first family listed (logistic by default) is also measured in depth, as the top-level figures:
- cold start: `python -m serving` process start to GET /ready == 200 (model in the registry), median of 3;
- a batch of `--batch-rows` rows: a Parquet upload to /predict/batch answered as CSV (the headline)
  and as an Arrow stream (mlflow: dataframe_split JSON), plus five back to back (the sustained rate);
- in process: one-row predict time (the floor), and the same batch through the same predict path,
  timed in the same rounds as the service's batches (and back to back, for reference);
- resident memory per worker;
- the prediction log's write rate from one worker's writer into PostgreSQL (COPY, and the INSERT path it
  replaced) and SQLite (benchmarks/log_rate.py, ``--log-rows`` rows).
For the first family, also the cost of shadow mode in the same run: a challenger (the same family, another
seed) scores every request off the response path while single-record load runs at concurrency 16;
shadow_p50_ms beside the same server's p50 without shadow at concurrency 16 (alternating rounds), target: at
most 20% more. For logistic and hist_gradient_boosting, also the cost of reason codes in the same run: the p50 that
?explain=3 adds to a single-record /predict (explain_added_p50_ms_logistic, explain_added_p50_ms_hgb).
Writes benchmarks/results/serving.json: the headline figures, a `families` section (per family: rps,
p50_ms and the mlflow figures, the ratios, the runtime that served), the targets and whether each is met.
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
from benchmarks.log_rate import log_rates as measure_log_rates
from benchmarks.record import write_result
from core.servers import HOST, VENV_BIN, free_port, spawn, start_mlflow, stop_process_group, wait_http
from core.settings import PROJECT_ROOT, get_settings

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "serving.json"
WORK = PROJECT_ROOT / "benchmarks" / ".work" / "serving"
MODEL_NAME = "bench-serving"
# Per family, and for the headline family at the top level too.
FAMILY_TARGETS = {"throughput_ratio": (">=", 10.0), "p50_ratio": (">=", 5.0)}
TARGETS = {
    "throughput_ratio": (">=", 10.0),
    "p50_ratio": (">=", 5.0),
    "batch_vs_inprocess": (">=", 0.5),
    "cold_start_s": ("<=", 5.0),
    "rss_mb": ("<=", 400.0),
    # One worker's prediction log into PostgreSQL (COPY), rows a second (benchmarks/log_rate.py).
    "prediction_log_postgres_rows_per_s": (">=", 100_000.0),
    "prediction_log_postgres_predict_slowdown": ("<=", 0.10),
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


def _predictor(tracking_uri: str, model_name: str) -> Any:
    """The champion, loaded and compiled the way the service loads it."""
    from core.inference.predictor import Predictor
    from core.registry.artefact import load_pipeline
    from serving.model_store import Registry

    settings = get_settings()
    registry = Registry(tracking_uri)
    info = registry.alias(model_name, "champion")
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
    from core.inference.predictor import columns_from_records

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


def _settled_model(url: str, use_onnx: bool, timeout: float = 180) -> dict[str, Any]:
    """GET /model once the ONNX upgrade (swapped in after readiness) has landed or said why not."""
    deadline = time.monotonic() + timeout
    model: dict[str, Any] = {}
    while time.monotonic() < deadline:
        model = httpx.get(f"{url}/model", timeout=10).json()
        if model["runtime"] != "numpy" or model["fallback_reason"] or not use_onnx:
            break
        time.sleep(0.5)
    return model


def _start_mlflow_serve(
    model_name: str, tracking_uri: str, workers: int, thread_env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = WORK / f"mlflow-serve-{model_name}.log"
    proc = spawn(
        "mlflow-serve",
        [
            str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{model_name}@champion",
            "--env-manager", "local", "-h", HOST, "-p", str(port), "-w", str(workers),
        ],
        log,
        # mlflow execs `uvicorn` by name: the venv's bin must be on PATH.
        {
            "MLFLOW_TRACKING_URI": tracking_uri,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            **thread_env,
        },
        cwd=PROJECT_ROOT,
    )  # fmt: skip
    try:
        wait_http(f"http://{HOST}:{port}/ping", 300, proc, log)
    except BaseException:
        stop_process_group(proc.pid)
        raise
    return proc, port


def _compare(port: int, mlflow_port: int, record: dict[str, Any], duration: float) -> dict[str, Any]:
    """Same label from both servers, then single-record load on each at concurrency 1 and 16."""
    ours_body = json.dumps(record).encode()
    mlflow_body = json.dumps({"dataframe_records": [record]}).encode()
    headers = {"Content-Type": "application/json"}
    ours = httpx.post(f"http://{HOST}:{port}/predict", content=ours_body, headers=headers, timeout=30).json()
    theirs = httpx.post(f"http://{HOST}:{mlflow_port}/invocations", content=mlflow_body, headers=headers, timeout=30)
    agreement = _agreement(ours["predictions"][0], theirs.json()["predictions"][0])
    _say(f"both servers answer: {agreement}")
    phases: dict[str, dict[str, float]] = {}
    for conc in (1, 16):
        phases[f"ours_c{conc}"] = _load_phase(port, ours_body, "/predict", conc, duration)
        _say(f"ours   c={conc}: {phases[f'ours_c{conc}']}")
        phases[f"mlflow_c{conc}"] = _load_phase(mlflow_port, mlflow_body, "/invocations", conc, duration)
        _say(f"mlflow c={conc}: {phases[f'mlflow_c{conc}']}")
    return {**agreement, "phases": phases}


# Reason codes: the p50 explain=k adds to a single-record /predict, per family measured (issue: explain).
EXPLAIN_K = 3
EXPLAIN_TARGETS = {"logistic": 0.5, "hist_gradient_boosting": 5.0}
SHADOW_MAX_ADDED = 0.20  # shadow mode may add at most 20% to the champion's p50 at concurrency 16
ADMIN_KEY = "bench-admin-key"


def _shadow_cost(port: int, record: dict[str, Any], duration: float, rounds: int = 2) -> dict[str, Any]:
    """p50 of /predict at concurrency 16 with the rollout off and in shadow mode, alternating on the same
    server; the shadow queue's drops counted from /metrics."""
    body = json.dumps(record).encode()
    admin = {"X-API-Key": ADMIN_KEY}

    def mode(name: str) -> None:
        r = httpx.put(f"http://{HOST}:{port}/admin/rollout", json={"mode": name}, headers=admin, timeout=120)
        r.raise_for_status()

    def shadow_counts() -> dict[str, float]:
        text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if line.startswith("serving_shadow_predictions_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                out[outcome] = float(line.rsplit(" ", 1)[1])
        return out

    off, shadow = [], []
    for _ in range(rounds):
        mode("off")
        off.append(_load_phase(port, body, "/predict", 16, duration)["p50_ms"])
        mode("shadow")
        shadow.append(_load_phase(port, body, "/predict", 16, duration)["p50_ms"])
    counts = shadow_counts()
    mode("off")
    base, with_shadow = statistics.median(off), statistics.median(shadow)
    return {
        "p50_ms_c16": base,
        "shadow_p50_ms": with_shadow,
        "added_share": with_shadow / base - 1,
        "rounds_p50_ms_c16": off,
        "rounds_shadow_p50_ms": shadow,
        "shadow_scored": counts.get("scored", 0.0),
        "shadow_dropped": counts.get("dropped", 0.0),
    }


EXPLAIN_KEYS = {"logistic": "explain_added_p50_ms_logistic", "hist_gradient_boosting": "explain_added_p50_ms_hgb"}


def _explain_cost(port: int, record: dict[str, Any], duration: float, rounds: int = 3) -> dict[str, Any]:
    """p50 of /predict with and without ?explain=k at concurrency 1, in alternating rounds on the same server
    (a shared machine drifts: a difference of two phases taken minutes apart would measure the drift)."""
    body = json.dumps(record).encode()
    resp = httpx.post(
        f"http://{HOST}:{port}/predict?explain={EXPLAIN_K}",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    resp.raise_for_status()
    method = resp.json()["predictions"][0]["explanation"]["method"]
    phase = max(1.0, duration / (2 * rounds))
    plain, explained = [], []
    for _ in range(rounds):
        plain.append(_load_phase(port, body, "/predict", 1, phase)["p50_ms"])
        explained.append(_load_phase(port, body, f"/predict?explain={EXPLAIN_K}", 1, phase)["p50_ms"])
    added = statistics.median(e - p for e, p in zip(explained, plain, strict=True))
    return {"method": method, "k": EXPLAIN_K, "added_p50_ms": added, "p50_ms": plain, "explain_p50_ms": explained}


def _agreement(ours: dict[str, Any], theirs: Any) -> dict[str, Any]:
    """Whether both servers answer the same. A classifier is logged with predict_proba as its pyfunc
    method, so mlflow answers the probabilities (in class order); its label is the likeliest class."""
    probabilities = ours.get("probabilities")
    if not isinstance(theirs, list) or not probabilities:
        return {"same_label": ours["prediction"] == theirs, "max_probability_diff": None}
    classes = list(probabilities)
    diff = max(abs(p - q) for p, q in zip(probabilities.values(), theirs, strict=True))
    return {"same_label": str(ours["prediction"]) == classes[theirs.index(max(theirs))], "max_probability_diff": diff}


def _met(op: str, value: float, target: float) -> bool:
    return value >= target if op == ">=" else value <= target


def _family_figures(compared: dict[str, Any], model: dict[str, Any], version: str) -> dict[str, Any]:
    phases = compared["phases"]
    c1, c16, m1, m16 = (phases[k] for k in ("ours_c1", "ours_c16", "mlflow_c1", "mlflow_c16"))
    figures: dict[str, Any] = {
        "rps": c16["rps"],
        "p50_ms": c1["p50_ms"],
        "p99_ms": c1["p99_ms"],
        "mlflow_rps": m16["rps"],
        "mlflow_p50_ms": m1["p50_ms"],
        "mlflow_p99_ms": m1["p99_ms"],
        "throughput_ratio": c16["rps"] / m16["rps"] if m16["rps"] else float("inf"),
        "p50_ratio": m1["p50_ms"] / c1["p50_ms"],
        "runtime": model.get("runtime"),
        "fallback_reason": model.get("fallback_reason"),
        "parity_max_abs_diff": model.get("parity_max_abs_diff"),
        "model_version": version,
        "same_label_as_mlflow": compared["same_label"],
        "max_probability_diff_vs_mlflow": compared["max_probability_diff"],
        "ours_rps_c1": c1["rps"],
        "mlflow_rps_c1": m1["rps"],
        "ours_p50_ms_c16": c16["p50_ms"],
        "mlflow_p50_ms_c16": m16["p50_ms"],
        "failed_requests": {k: v["failed"] for k, v in phases.items()},
    }
    figures["targets"] = {
        k: {"target": f"{op} {v:g}", "value": figures[k], "met": _met(op, figures[k], v)}
        for k, (op, v) in FAMILY_TARGETS.items()
    }
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=None, help="uvicorn workers for both servers (default: settings)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument(
        "--families",
        type=lambda text: [f.strip() for f in text.split(",") if f.strip()],
        default=None,
        help="comma-separated model families (default: every family the training flow can register); "
        "the first is also measured in depth (cold start, batches, memory)",
    )
    parser.add_argument(
        "--log-rows", type=int, default=200_000, help="rows logged to measure the prediction log's write rate"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    # Imported here so that `--help` stays instant.
    import mlflow

    from core.modeling.families import FAMILIES, get_family
    from serving.example_model import register_example_model
    from serving.schemas import build_models

    # An unknown name fails here, before any server starts.
    families = [get_family(f).name for f in args.families or list(FAMILIES)]
    headline = families[0]
    settings = get_settings()
    workers = args.workers or settings.serving.workers
    threads = str(settings.serving.threads_per_worker)
    # The same BLAS/OpenMP threads per worker for both servers (serving sets them itself; mlflow does not).
    thread_env = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), threads)
    contract = settings.contract
    record = build_models(contract).example
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    started_all = time.perf_counter()
    servers: list[int] = []
    per_family: dict[str, dict[str, Any]] = {}
    deep: dict[str, Any] = {}
    try:
        _say("starting an MLflow tracking server")
        tracking = start_mlflow(f"sqlite:///{WORK / 'mlflow.db'}", WORK / "artifacts", WORK / "mlflow.log")
        servers.append(tracking.proc.pid)
        mlflow.set_tracking_uri(tracking.url)
        for family in families:
            name = f"{MODEL_NAME}-{family}"
            _say(f"registering a {family} model as {name}@champion")
            version = register_example_model(contract, name, family=family, n_rows=5_000, seed=0)
            port = free_port()
            env = {
                "MLOPS_STATE_DIR": str(WORK / "state" / family),
                "MLOPS_MLFLOW_TRACKING_URI": tracking.url,
                "MLOPS_MODEL_NAME": name,
                "MLOPS_SERVING__PORT": str(port),
                "MLOPS_SERVING__WORKERS": str(workers),
                "MLOPS_SERVING_LOG_LEVEL": "warning",
                "MLOPS_ADMIN_API_KEY": ADMIN_KEY,  # PUT /admin/rollout switches shadow mode on and off
            }
            cmd = [str(VENV_BIN / "python"), "-m", "serving"]
            cold = []
            ours = None
            for i in range(3 if family == headline else 1):
                log = WORK / f"serving-{family}-{i}.log"
                proc = spawn("serving", cmd, log, env, cwd=PROJECT_ROOT)
                servers.append(proc.pid)
                cold.append(_wait_ready(f"http://{HOST}:{port}/ready", proc, log))
                _say(f"{family}: cold start {i + 1}: {cold[-1]:.2f}s")
                ours = proc
                if family == headline and i < 2:
                    stop_process_group(proc.pid)
            assert ours is not None
            url = f"http://{HOST}:{port}"
            model = _settled_model(url, settings.serving.use_onnx)
            reason = model.get("fallback_reason") or "no fallback"
            _say(f"{family}: our service runs on {model.get('runtime')} ({reason})")

            _say(f"{family}: starting `mlflow models serve` with {workers} worker(s)")
            mlflow_proc, mlflow_port = _start_mlflow_serve(name, tracking.url, workers, thread_env)
            servers.append(mlflow_proc.pid)
            compared = _compare(port, mlflow_port, record, args.duration)
            per_family[family] = _family_figures(compared, model, version)
            if family in EXPLAIN_TARGETS:
                per_family[family]["explain"] = _explain_cost(port, record, args.duration)
                _say(f"{family}: explain={EXPLAIN_K} adds {per_family[family]['explain']['added_p50_ms']:.3f} ms p50")
            _say(
                f"{family}: {per_family[family]['throughput_ratio']:.1f}x throughput, "
                f"{per_family[family]['p50_ratio']:.1f}x lower p50"
            )
            if family == headline:
                register_example_model(contract, name, family=family, n_rows=5_000, seed=1, alias="challenger")
                per_family[family]["shadow"] = _shadow_cost(port, record, args.duration)
                shadow = per_family[family]["shadow"]
                _say(
                    f"{family}: c=16 p50 {shadow['p50_ms_c16']:.2f} ms, "
                    f"in shadow mode {shadow['shadow_p50_ms']:.2f} ms "
                    f"({shadow['added_share']:+.0%}; {shadow['shadow_dropped']:.0f} shadow scorings dropped of "
                    f"{shadow['shadow_scored'] + shadow['shadow_dropped']:.0f})"
                )
                deep = _in_depth(url, port, mlflow_port, ours.pid, mlflow_proc.pid, tracking.url, name, args)
                deep.update(cold_starts_s=cold, compared=compared, model=model, version=version)
            stop_process_group(mlflow_proc.pid)
            stop_process_group(ours.pid)
    finally:
        for pid in reversed(servers):
            stop_process_group(pid)

    head = per_family[headline]
    batch_s = deep["batch_s"]
    inprocess_batch_s = deep["inprocess_batch_s"]
    predictor = deep["predictor"]
    inproc = deep["inproc"]
    load_results = deep["compared"]["phases"]
    c1, c16 = load_results["ours_c1"], load_results["ours_c16"]
    m1, m16 = load_results["mlflow_c1"], load_results["mlflow_c16"]
    result: dict[str, Any] = {
        "p50_ms": head["p50_ms"],
        "p99_ms": head["p99_ms"],
        "rps": head["rps"],
        "mlflow_p50_ms": head["mlflow_p50_ms"],
        "mlflow_p99_ms": head["mlflow_p99_ms"],
        "mlflow_rps": head["mlflow_rps"],
        "throughput_ratio": head["throughput_ratio"],
        "p50_ratio": head["p50_ratio"],
        "floor_ms": inproc["floor_ms"],
        "batch_rows_per_s": args.batch_rows / batch_s,
        "inprocess_batch_rows_per_s": args.batch_rows / inprocess_batch_s,
        "cold_start_s": statistics.median(deep["cold_starts_s"]),
        "rss_mb": deep["rss_mb"],
        "shadow_p50_ms": head["shadow"]["shadow_p50_ms"],
        "shadow_base_p50_ms_c16": head["shadow"]["p50_ms_c16"],
        "shadow_added_share": head["shadow"]["added_share"],
    }
    _say(f"prediction log: {args.log_rows} rows into PostgreSQL (COPY, then INSERT) and SQLite")
    log_rates = measure_log_rates(settings, args.log_rows)
    result["prediction_log_postgres_rows_per_s"] = log_rates["postgres_copy"]["rows_per_s"]
    result["prediction_log_postgres_insert_rows_per_s"] = log_rates["postgres_insert"]["rows_per_s"]
    result["prediction_log_sqlite_rows_per_s"] = log_rates["sqlite"]["rows_per_s"]
    result["prediction_log_postgres_predict_slowdown"] = log_rates["postgres_copy_predict"]["slowdown"]
    result["prediction_log_postgres_insert_predict_slowdown"] = log_rates["postgres_insert_predict"]["slowdown"]
    result["prediction_log"] = log_rates
    derived = {**result, "batch_vs_inprocess": inprocess_batch_s / batch_s}
    result["targets"] = {
        k: {"target": f"{op} {v:g}", "value": derived[k], "met": _met(op, derived[k], v)}
        for k, (op, v) in TARGETS.items()
    }
    added = result["shadow_added_share"]
    result["targets"]["shadow_added_share"] = {
        "target": f"<= {SHADOW_MAX_ADDED:g}",
        "value": added,
        "met": added <= SHADOW_MAX_ADDED,
    }
    for explained, key in EXPLAIN_KEYS.items():
        if explained in per_family:
            added = per_family[explained]["explain"]["added_p50_ms"]
            result[key] = added
            limit = EXPLAIN_TARGETS[explained]
            result["targets"][key] = {"target": f"<= {limit:g}", "value": added, "met": added <= limit}
    for k, (op, v) in FAMILY_TARGETS.items():
        worst = min(f[k] for f in per_family.values())
        result["targets"][f"every_family_{k}"] = {"target": f"{op} {v:g}", "value": worst, "met": _met(op, worst, v)}
    result["families"] = per_family
    reduced = (
        args.duration < 10.0 or args.log_rows < 200_000 or args.batch_rows < 10_000 or set(families) != set(FAMILIES)
    )
    result["details"] = {
        "reduced": reduced,  # a run smaller than the default (fewer families, shorter phases, fewer rows)
        "shadow": head["shadow"],
        "model": {
            "name": f"{MODEL_NAME}-{headline}",
            "version": deep["version"],
            "family": headline,
            "runtime": deep["model"].get("runtime"),
        },
        "families_measured": families,
        "inprocess_runtime": predictor.runtime,
        "workers": workers,
        "threads_per_worker": int(threads),
        "duration_s_per_phase": args.duration,
        "batch_rows": args.batch_rows,
        "batch_format": "parquet upload -> CSV stream (ours); dataframe_split JSON (mlflow)",
        "arrow_batch_rows_per_s": args.batch_rows / deep["arrow_batch_s"],
        "arrow_batch_vs_inprocess": inprocess_batch_s / deep["arrow_batch_s"],
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
        "batch_times_s": deep["batch_times"],
        "sustained_batch_rows_per_s_with_logging": deep["sustained_rows_per_s"],
        "mlflow_batch_rows_per_s": args.batch_rows / deep["mlflow_batch_s"],
        "mlflow_rss_mb": deep["mlflow_rss_mb"],
        "cold_starts_s": deep["cold_starts_s"],
        "same_label_as_mlflow": head["same_label_as_mlflow"],
        "load_generator": "benchmarks.loadgen (asyncio keep-alive connections, one process), every phase and "
        "both servers; batches one request at a time",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "total_s": time.perf_counter() - started_all,
    }
    write_result(result, args.out, shown=[k for k in result if k != "details"])
    if reduced:
        _say("REDUCED run (shorter phases, fewer families or rows than the defaults): not the reference figures")
    return result


def _in_depth(  # noqa: PLR0917 - one call site
    url: str, port: int, mlflow_port: int, ours_pid: int, mlflow_pid: int, tracking_uri: str, model_name: str,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """The headline family's batches (over HTTP and in process), one-row floor and memory."""
    from core.inference.predictor import columns_from_frame
    from core.inference.sample import synthetic_frame
    from serving.schemas import build_models

    contract = get_settings().contract
    record = build_models(contract).example
    batch = synthetic_frame(contract, args.batch_rows, seed=21)
    parquet = io.BytesIO()
    batch.to_parquet(parquet)
    predictor = _predictor(tracking_uri, model_name)

    def in_process() -> object:  # what a Python caller holding a DataFrame does
        return predictor.predict(columns_from_frame(batch, contract))

    # The headline is the default CSV output; the Arrow stream is measured alongside.
    batch_times = _batch_phase(port, parquet.getvalue(), "application/vnd.apache.parquet", args.batch_rows, in_process)
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
    out: dict[str, Any] = {
        "predictor": predictor,
        "batch_times": batch_times,
        "batch_s": statistics.median(batch_times["csv"]),
        "arrow_batch_s": statistics.median(batch_times["arrow"]),
        "inprocess_batch_s": statistics.median(batch_times["in_process"]),
        "sustained_rows_per_s": sustained_rows_per_s,
        "mlflow_batch_s": statistics.median(elapsed for elapsed, _, _ in mlflow_answers),
        "rss_mb": _worker_rss_mb(ours_pid),
        "mlflow_rss_mb": _worker_rss_mb(mlflow_pid),
    }
    _say(
        f"batch of {args.batch_rows}: {out['batch_s']:.3f}s (Arrow: {out['arrow_batch_s']:.3f}s), "
        f"mlflow {out['mlflow_batch_s']:.3f}s"
    )
    out["inproc"] = _floor_and_hot_batches(predictor, record, in_process)
    _say(f"in process: batch {out['inprocess_batch_s']:.3f}s, {out['inproc']}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
