"""The prediction service: a FastAPI app built from the settings and the dataset contract.

`create_app()` is the factory uvicorn runs (`python -m serving`): it assembles the routers of
serving.routes (predictions, feedback, operations, admin), the error handler of serving.errors and
the limits/metrics middleware of serving.middleware; its lifespan loads the model and starts the
prediction log. Dependencies are in serving.deps, batch input in serving.batch, batch output in
serving.encoders.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from threadpoolctl import threadpool_limits

from core.settings import Settings, get_settings
from serving.deps import API_KEY_HEADER
from serving.errors import validation_error
from serving.middleware import LimitsAndMetrics
from serving.model_store import ModelStore
from serving.prediction_log import PredictionLog
from serving.rollout import Rollout
from serving.routes import admin, explanations, operations, webhooks
from serving.routes.feedback import feedback_router
from serving.routes.predictions import predictions_router
from serving.schemas import build_models


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    contract = settings.contract
    models = build_models(contract)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One BLAS/OpenMP thread per worker (by default): workers scale out, threads would fight.
        limits = threadpool_limits(settings.serving.threads_per_worker)
        plog = PredictionLog(
            settings.prediction_log_url,
            contract,
            settings.serving.spool_dir or settings.state / "serving" / "spool",
            batch_rows=settings.serving.log_batch_rows,
            flush_s=settings.serving.log_flush_s,
            retry_s=settings.serving.log_retry_s,
            max_backlog_rows=settings.serving.log_max_backlog_rows,
        )
        plog.start()
        store = ModelStore(settings)
        rollout = Rollout(settings, store.registry, plog)
        app.state.store, app.state.prediction_log, app.state.rollout = store, plog, rollout
        await asyncio.to_thread(store.refresh)
        if rollout.active:  # the challenger is loaded when a mode needs it (PUT /admin/rollout loads it too)
            await asyncio.to_thread(rollout.challenger.refresh)
        rollout.start()
        watchers = [asyncio.create_task(store.watch()), asyncio.create_task(rollout.watch(store))]
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await asyncio.to_thread(rollout.stop)
            await asyncio.to_thread(plog.stop)
            store.registry.close()
            limits.restore_original_limits()

    # /docs and /redoc with their scripts served from this process (FastAPI's default pages fetch them
    # from a CDN and render blank offline).
    app = FastAPIOffline(
        title=f"{contract.name} prediction service",
        description=contract.description,
        version="1.0.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    routers = [
        predictions_router(models),
        explanations.router,
        feedback_router(models),
        operations.router,
        admin.router,
        webhooks.router,
    ]
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, validation_error)
    if settings.serving.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.serving.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
        )
    endpoints = {getattr(r, "path", "") for router in routers for r in router.routes} | {"/openapi.json", "/docs"}
    app.add_middleware(LimitsAndMetrics, settings=settings, endpoints=endpoints)
    return app
