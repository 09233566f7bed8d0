"""`python -m serving`: the serve command (Dockerfile, `make serve` and the tests all run this).

Thread limits are set in the environment before numpy, scikit-learn or ONNX Runtime load, so that
every worker process starts with them.
"""

from __future__ import annotations

import os
import tempfile


def main() -> None:
    from core.settings import get_settings

    settings = get_settings()
    threads = str(settings.serving.threads_per_worker)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)
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
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
