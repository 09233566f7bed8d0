# syntax=docker/dockerfile:1
# One image for the project (docker-compose.yml runs MLflow, Prefect and the API from it); its own
# command is the prediction service, the same `python -m serving` that `make serve` and the tests run.

# ---- build: resolve the locked environment with uv --------------------------------------------
FROM python:3.11.14-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
# Compiled bytecode: imports are 2-3x faster, and start-up is mostly imports.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
COPY pyproject.toml uv.lock ./
# Dependencies only (not the project itself): this layer is reused until the lock file changes.
RUN uv sync --frozen --no-dev --no-install-project

# ---- runtime: the environment and the code, no build tools, not root --------------------------
FROM python:3.11.14-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY core ./core
COPY serving ./serving
COPY pipelines ./pipelines
COPY monitoring ./monitoring
COPY demo ./demo
COPY configs ./configs
COPY deploy ./deploy
COPY prefect.yaml ./
RUN mkdir -p /app/.state && chown app:app /app/.state
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    MLOPS_STATE_DIR=/app/.state \
    MLOPS_SERVING__HOST=0.0.0.0 \
    MLOPS_SERVING__PORT=8000
USER 10001:10001
EXPOSE 8000
# Liveness only (GET /health); readiness (/ready) depends on the registry and is for the orchestrator.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['MLOPS_SERVING__PORT'] + '/health', timeout=2)"]
CMD ["python", "-m", "serving"]
