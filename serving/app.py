"""The prediction service: a FastAPI app built from the settings and the dataset contract.

`create_app()` is the factory uvicorn runs (`python -m serving`). Routers per resource: predictions,
feedback, operations (health, ready, model, metrics) and admin.
"""

import asyncio
import contextlib
import hmac
import io
import json
import logging
import time
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from pydantic import Discriminator, Field, Tag
from threadpoolctl import threadpool_limits

from core.contract import DatasetContract
from core.settings import Settings, get_settings
from serving import metrics
from serving.batch import ARROW_STREAM, PARQUET_TYPES, BatchInputError, check_table, chunks, parse_upload
from serving.model_store import LoadedModel, ModelStore
from serving.prediction_log import PredictionLog
from serving.predictor import Columns, Prediction, columns_from_records
from serving.schemas import (
    ContractModels,
    ErrorOut,
    FeedbackOut,
    HealthOut,
    ModelOut,
    PredictionOut,
    PredictOut,
    ReadyOut,
    ReloadOut,
    build_models,
    unknown_flag,
)

log = logging.getLogger("serving")

# core.modeling.features.TimeFeatures is fitted on a bare array but called with a DataFrame; scikit-learn
# warns on every call of the Pipeline fallback path. The values are right; the warning is noise here.
warnings.filterwarnings("ignore", message="X has feature names, but TimeFeatures")

API_KEY_HEADER = "X-API-Key"
_api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="API key")


# ---- dependencies -------------------------------------------------------------------------------
# All `async def`: FastAPI runs a plain `def` dependency in a worker thread, and a thread hop per
# dependency cost more than the prediction itself.


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with (`create_app(settings)`, else the cached get_settings())."""
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


async def get_model(request: Request) -> LoadedModel:
    current = request.app.state.store.current  # read once: the request keeps this model to the end
    if current is None:
        raise HTTPException(503, "no model loaded yet; see GET /ready")
    model: LoadedModel = current
    return model


async def get_prediction_log(request: Request) -> PredictionLog:
    plog: PredictionLog = request.app.state.prediction_log
    return plog


def _key_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
APIKeyDep = Annotated[str | None, Depends(_api_key)]


# The key checks read the settings from the request rather than through SettingsDep: one dependency
# fewer to resolve on every prediction.
async def require_predict_key(request: Request, key: APIKeyDep) -> None:
    expected = request.app.state.settings.serving.api_key
    if expected is not None and not _key_matches(key, expected.get_secret_value()):
        raise HTTPException(401, f"missing or wrong {API_KEY_HEADER} header", headers={"WWW-Authenticate": "ApiKey"})


async def require_admin_key(request: Request, key: APIKeyDep) -> None:
    settings: Settings = request.app.state.settings
    if settings.admin_api_key is None:
        raise HTTPException(403, "admin endpoints are disabled: set MLOPS_ADMIN_API_KEY")
    if not _key_matches(key, settings.admin_api_key.get_secret_value()):
        raise HTTPException(401, f"missing or wrong {API_KEY_HEADER} header", headers={"WWW-Authenticate": "ApiKey"})


StoreDep = Annotated[ModelStore, Depends(get_store)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
LogDep = Annotated[PredictionLog, Depends(get_prediction_log)]
PredictKey = Depends(require_predict_key)
AdminKey = Depends(require_admin_key)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A body that cannot be parsed at all (not JSON, not UTF-8)"},
    401: {"model": ErrorOut, "description": "Missing or wrong API key"},
    413: {"model": ErrorOut, "description": "Body or batch larger than the configured limit"},
    422: {"model": ErrorOut, "description": "Input that breaks the dataset contract; the message names the field"},
    503: {"model": ErrorOut, "description": "No model loaded yet"},
}


# ---- predictions --------------------------------------------------------------------------------


def _log_block(  # noqa: PLR0917 - one call site per endpoint, all arguments are needed
    plog: PredictionLog,
    model: LoadedModel,
    columns: dict[str, Any],
    ids: list[str] | pa.Array,
    result: Prediction,
    flags: list[str | None] | pa.Array,
    latency_ms: float,
) -> None:
    """Hand the prediction log the arrays the prediction was made from: no per-row work here."""
    probs = result.probabilities
    block: dict[str, Any] = {
        **columns,
        "request_id": ids,
        "model_name": model.name,
        "model_version": model.version,
        "timestamp": datetime.now(UTC),
        "latency_ms": latency_ms,
        "prediction": result.labels,
        "probability": probs[:, _positive_index(model)] if probs is not None else None,
        "flags": flags,
    }
    plog.log_block(block, len(ids))


def _count(model: LoadedModel, result: Prediction) -> None:
    """Prediction metrics for a whole block at once (a 10,000-row batch is one call per label)."""
    for label, n in Counter(result.labels).items():
        metrics.PREDICTIONS.labels(model.version, str(label)).inc(n)
    probs = result.probabilities
    if probs is not None and probs.shape[1] == 2:
        metrics.observe_many(metrics.SCORES, probs[:, _positive_index(model)])


def _positive_index(model: LoadedModel) -> int:
    classes = model.predictor.classes
    if not classes:
        return 0
    positive = model.predictor.positive_class
    if positive in classes:
        return classes.index(positive)
    return len(classes) - 1


def predictions_router(models: ContractModels) -> APIRouter:
    router = APIRouter(tags=["predictions"], dependencies=[PredictKey])
    record_type: Any = models.record
    records_type: Any = Annotated[list[record_type], Field(min_length=1)]
    body_type: Any = Annotated[
        Annotated[record_type, Tag("record")] | Annotated[records_type, Tag("records")],
        Discriminator(lambda v: "records" if isinstance(v, list) else "record"),
    ]

    @router.post("/predict", response_model=PredictOut, responses=_ERRORS, summary="Predict one record or a list")
    async def predict(body: Annotated[body_type, Body()], model: ModelDep, plog: LogDep) -> PredictOut:
        started = time.perf_counter()
        items = body if isinstance(body, list) else [body]
        records = [r.__dict__ for r in items]
        contract = model.predictor.contract
        if len(records) == 1:
            result = model.predictor.predict_record(records[0])
            columns: dict[str, Any] = {k: [v] for k, v in records[0].items()}  # the log takes lists too
        else:
            columns = columns_from_records(records, contract)
            result = model.predictor.predict(columns)
        request_id = uuid.uuid4().hex
        ids = [request_id] if len(records) == 1 else [f"{request_id}-{i}" for i in range(len(records))]
        flags = [models.flags(r) for r in records] if models.unknown_allowed else [[] for _ in records]
        probs = result.probabilities
        keys = [str(c) for c in result.classes]
        out = [
            PredictionOut(
                request_id=ids[i],
                prediction=result.labels[i],
                probabilities=dict(zip(keys, probs[i].tolist(), strict=True)) if probs is not None else None,
                flags=flags[i],
            )
            for i in range(len(records))
        ]
        latency_ms = (time.perf_counter() - started) * 1000
        flag_text = ["; ".join(f) or None for f in flags]
        _log_block(plog, model, columns, ids, result, flag_text, latency_ms)
        _count(model, result)
        for row_flags in flags:
            for flag in row_flags:
                metrics.UNKNOWN_CATEGORIES.labels(flag.split(":", 1)[0]).inc()
        return PredictOut(request_id=request_id, model_name=model.name, model_version=model.version, predictions=out)

    @router.post(
        "/predict/batch",
        responses={
            200: {
                "content": {"text/csv": {}, "application/x-ndjson": {}, ARROW_STREAM: {}},
                "description": "One line per input row (CSV, NDJSON), or one Arrow record batch per chunk",
            },
            **_ERRORS,
            415: {"model": ErrorOut, "description": "A content type other than CSV, JSON, Parquet or multipart"},
        },
        summary="Predict a CSV, Parquet or JSON batch; results stream back",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {
                        "schema": {"type": "array", "items": {"$ref": "#/components/schemas/RecordIn"}}
                    },
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    },
                },
            }
        },
        response_class=StreamingResponse,
    )
    async def predict_batch(
        request: Request,
        model: ModelDep,
        plog: LogDep,
        settings: SettingsDep,
        output: Annotated[
            Literal["csv", "ndjson", "arrow"],
            Query(alias="format", description="csv (default), ndjson, or arrow: an Arrow IPC stream"),
        ] = "csv",
    ) -> StreamingResponse:
        data, kind = await _read_batch_body(request)
        contract = model.predictor.contract
        limits = settings.serving
        try:
            # Parsing and checking are CPU work: off the event loop, so other requests keep flowing.
            table, (columns, unknown) = await asyncio.to_thread(
                _parse_and_check, data, kind, contract, limits.max_batch_rows
            )
        except BatchInputError as exc:
            raise HTTPException(exc.status, exc.detail) from None
        except (ValueError, TypeError) as exc:  # a value the checks let through but pandas cannot convert
            raise HTTPException(422, f"body: could not read the batch: {str(exc)[:300]}") from None
        for column, mask in unknown.items():
            metrics.UNKNOWN_CATEGORIES.labels(column).inc(int(mask.sum()))
        request_id = uuid.uuid4().hex
        stream = _batch_lines(
            model, columns, table.num_rows, request_id, limits.batch_chunk_rows, output, plog, unknown
        )
        media = {"csv": "text/csv", "ndjson": "application/x-ndjson", "arrow": ARROW_STREAM}[output]
        return StreamingResponse(stream, media_type=media, headers={"X-Request-ID": request_id})

    return router


def _parse_and_check(
    data: bytes, kind: str, contract: DatasetContract, max_rows: int
) -> tuple[pa.Table, tuple[Columns, dict[str, np.ndarray]]]:
    table = parse_upload(data, kind)
    return table, check_table(table, contract, max_rows)


async def _read_batch_body(request: Request) -> tuple[bytes, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=5)
        except Exception as exc:
            raise HTTPException(422, f"body: malformed multipart upload: {exc}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "file: a multipart batch needs a 'file' part (CSV or Parquet)")
        name = (upload.filename or "").lower()
        data = await upload.read()
        part_type = (upload.content_type or "").lower()
        kind = "parquet" if name.endswith((".parquet", ".pq")) or part_type in PARQUET_TYPES else "csv"
        if name.endswith(".json") or part_type == "application/json":
            kind = "json"
        return data, kind
    kinds = {"text/csv": "csv", "application/json": "json", **dict.fromkeys(PARQUET_TYPES, "parquet")}
    if ctype not in kinds:
        raise HTTPException(415, f"content-type: send text/csv, application/json, {PARQUET_TYPES[0]} or multipart")
    return await request.body(), kinds[ctype]


def _batch_lines(  # noqa: PLR0917
    model: LoadedModel,
    columns: Columns,
    n_rows: int,
    request_id: str,
    chunk_rows: int,
    output: str,
    plog: PredictionLog,
    unknown: dict[str, np.ndarray],
) -> Iterator[bytes]:
    """Predict chunk by chunk and yield the encoded results; a sync generator, so Starlette runs it in
    a thread.

    CSV is written by Arrow's C++ writer from the result arrays (formatting rows in Python would cost
    more than the prediction itself); `arrow` sends the same columns as an Arrow IPC stream, one record
    batch per chunk, with no text formatting at all.
    """
    classes = [str(c) for c in model.predictor.classes]
    sink = io.BytesIO()
    arrow_writer: pa.ipc.RecordBatchStreamWriter | None = None
    for offset, chunk in chunks(columns, n_rows, chunk_rows):
        started = time.perf_counter()
        result = model.predictor.predict(chunk)
        n = len(result.labels)
        ids = pc.binary_join_element_wise(
            request_id, pc.cast(pa.array(np.arange(offset, offset + n)), pa.string()), "-"
        )
        flagged = _chunk_flags(unknown, chunk, offset, n)
        flags = _flag_column(flagged, n)
        probs = result.probabilities
        if output == "ndjson":
            id_list = ids.to_pylist()
            yield "".join(
                json.dumps(
                    {
                        "request_id": id_list[i],
                        "prediction": result.labels[i],
                        "probabilities": dict(zip(classes, probs[i].tolist(), strict=True))
                        if probs is not None
                        else None,
                        "flags": flagged.get(i, []),
                    }
                )
                + "\n"
                for i in range(n)
            ).encode()
        else:
            table: dict[str, Any] = {"request_id": ids, "prediction": pa.array(result.labels)}
            if probs is not None:
                # CSV: six decimals (the parity tolerance is 1e-4; full float text would double the bytes).
                values = np.round(probs, 6) if output == "csv" else probs
                table.update({f"p_{c}": values[:, k] for k, c in enumerate(classes)})
            table["flags"] = flags
            batch = pa.record_batch(table)
            if output == "csv":
                pa_csv.write_csv(batch, sink, pa_csv.WriteOptions(include_header=offset == 0))
            else:
                if arrow_writer is None:
                    arrow_writer = pa.ipc.new_stream(sink, batch.schema)
                arrow_writer.write_batch(batch)
            yield sink.getvalue()
            sink.seek(0)
            sink.truncate()
        latency_ms = (time.perf_counter() - started) * 1000 / max(n, 1)
        _log_block(plog, model, chunk, ids, result, flags, latency_ms)
        _count(model, result)
    if arrow_writer is not None:
        arrow_writer.close()  # the end-of-stream marker
        yield sink.getvalue()


def _chunk_flags(unknown: dict[str, np.ndarray], chunk: Columns, offset: int, n: int) -> dict[int, list[str]]:
    """The flags of each flagged row in the chunk (masks from the batch check), worded as /predict words them."""
    flagged: dict[int, list[str]] = {}
    for name, mask in unknown.items():
        for i in np.flatnonzero(mask[offset : offset + n]).tolist():
            flagged.setdefault(i, []).append(unknown_flag(name, chunk[name][i]))
    return flagged


def _flag_column(flagged: dict[int, list[str]], n: int) -> pa.Array:
    """'; '-joined flags per row, null (an empty CSV field) where nothing is flagged."""
    if not flagged:
        return pa.nulls(n, pa.string())
    text = np.full(n, None, dtype=object)
    for i, row_flags in flagged.items():
        text[i] = "; ".join(row_flags)
    return pa.array(text, pa.string())


# ---- feedback -----------------------------------------------------------------------------------


def feedback_router(models: ContractModels) -> APIRouter:
    router = APIRouter(tags=["feedback"], dependencies=[PredictKey])
    feedback_type: Any = models.feedback

    @router.post("/feedback", response_model=FeedbackOut, status_code=202, responses=_ERRORS)
    async def feedback(body: feedback_type, plog: LogDep) -> FeedbackOut:
        plog.log_feedback(body.request_id, body.label)
        return FeedbackOut(request_id=body.request_id)

    return router


# ---- operations ---------------------------------------------------------------------------------

operations = APIRouter(tags=["operations"])


@operations.get("/health", response_model=HealthOut, summary="Liveness: the process answers")
async def health() -> HealthOut:
    return HealthOut()


@operations.get("/ready", response_model=ReadyOut, responses={503: {"model": ReadyOut}}, summary="A model is loaded")
async def ready(store: StoreDep) -> Response:
    body = ReadyOut(
        ready=store.current is not None,
        model_version=store.version,
        registry_reachable=store.registry_reachable,
        detail=store.last_error,
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@operations.get("/model", response_model=ModelOut, responses={503: {"model": ErrorOut}}, summary="The serving model")
async def model_info(model: ModelDep) -> ModelOut:
    p = model.predictor
    threshold = p.threshold
    return ModelOut(
        name=model.name,
        alias=model.alias,
        version=model.version,
        run_id=model.run_id,
        runtime=p.runtime,
        parity_max_abs_diff=p.parity_max_abs_diff,
        fallback_reason=p.fallback_reason,
        family=model.metadata.get("family", model.tags.get("family")),
        threshold=threshold,
        metrics=model.metrics,
        data_window_start=model.tags.get("data_window_start"),
        data_window_end=model.tags.get("data_window_end"),
        tags=model.tags,
        card=model.card,
        loaded_at=model.loaded_at,
    )


@operations.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    body, ctype = metrics.render()
    return Response(body, media_type=ctype)


# ---- admin --------------------------------------------------------------------------------------

admin = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminKey])


@admin.post("/reload", response_model=ReloadOut, responses=_ERRORS, summary="Check the alias now; swap if it moved")
async def reload_model(store: StoreDep) -> ReloadOut:
    changed = await asyncio.to_thread(store.refresh)
    return ReloadOut(changed=changed, model_version=store.version, detail=store.last_error)


# ---- errors and limits --------------------------------------------------------------------------

_UNION_TAGS = {"record", "records", "body"}


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if str(p) not in _UNION_TAGS]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        field = _field_name(loc)
        message = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":  # loc is ("body", character offset): the body is at fault
            field = "body"
            at = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
            message = f"malformed JSON{at}: {err.get('ctx', {}).get('error', message)}"
        errors.append({"field": field, "message": message, "type": err.get("type")})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:20])
    return JSONResponse({"detail": detail, "errors": errors[:100]}, status_code=422)


class LimitsAndMetrics:
    """Pure ASGI middleware: refuse oversized bodies with 413, count and time every request."""

    def __init__(self, app: Any, settings: Settings, endpoints: set[str]) -> None:
        self.app = app
        self.max_body = settings.serving.max_body_bytes
        self.max_batch = settings.serving.max_batch_bytes
        self.endpoints = endpoints

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"
        method = scope["method"]
        limit = self.max_batch if path == "/predict/batch" else self.max_body
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                await _too_large(send_wrapper, limit)
                return
            # Read the body here, against the limit, so that an oversized chunked body is a 413 too
            # (raised inside FastAPI's body parsing it would surface as a generic 400).
            chunks: list[bytes] = []
            received = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                received += len(message.get("body", b""))
                if received > limit:
                    await _too_large(send_wrapper, limit)
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay() -> MutableMapping[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_wrapper)
        finally:
            metrics.REQUESTS.labels(endpoint, method, str(status["code"])).inc()
            metrics.LATENCY.labels(endpoint, method, str(status["code"])).observe(time.perf_counter() - started)


def _content_length(scope: MutableMapping[str, Any]) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], limit: int) -> None:
    body = b'{"detail":"body: the request body is larger than the limit of ' + str(limit).encode() + b' bytes"}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---- the app ------------------------------------------------------------------------------------


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
        )
        plog.start()
        store = ModelStore(settings)
        app.state.store, app.state.prediction_log = store, plog
        await asyncio.to_thread(store.refresh)
        watcher = asyncio.create_task(store.watch())
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
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
    routers = [predictions_router(models), feedback_router(models), operations, admin]
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    if settings.serving.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.serving.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
        )
    # Metrics are labelled by route, and anything else is "other": a scan of random URLs must not
    # create a time series per URL.
    endpoints = {getattr(r, "path", "") for router in routers for r in router.routes} | {"/openapi.json", "/docs"}
    app.add_middleware(LimitsAndMetrics, settings=settings, endpoints=endpoints)
    return app
