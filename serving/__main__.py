"""`python -m serving`: the serve command (Dockerfile, `make serve` and the tests all run this).

Thread limits are set in the environment before numpy, scikit-learn or ONNX Runtime load, so that
every worker process starts with them.
"""

from __future__ import annotations

import os
import sys
import tempfile

# skops lists the scikit-learn types it trusts by walking every scikit-learn module at import, and that
# walk also imports pytest and dask when they are installed (dev tools here), ~0.3-0.8 s of start-up for
# modules the service never uses. Marking them absent makes the walk skip them (it ignores ImportError);
# the trusted-type list is unchanged (tests/unit/test_serving_imports.py checks it). Top level, so that
# worker processes started by uvicorn (which re-import this module) get it too.
for _unused in ("pytest", "dask"):
    sys.modules.setdefault(_unused, None)  # type: ignore[arg-type]


def main() -> None:
    from core.settings import get_settings

    settings = get_settings()
    threads = str(settings.serving.threads_per_worker)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)
    # Arrow's default pool (mimalloc) keeps what a batch request freed: with the C allocator a worker
    # held ~20 MB less after ten 10,000-row batches, at the same batch latency.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if settings.serving.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its metrics here; /metrics sums them (see serving.metrics).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="serving-metrics-")

    import uvicorn

    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=settings.serving.host,
        port=settings.serving.port,
        workers=settings.serving.workers,
        log_level=os.environ.get("MLOPS_SERVING_LOG_LEVEL", "info"),
        access_log=False,  # per-request logs cost more than the prediction; /metrics counts requests
        timeout_keep_alive=settings.serving.keep_alive_s,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
