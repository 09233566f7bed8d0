"""POST /predict (one record or a list) and POST /predict/batch (a CSV, Parquet or JSON upload).

Both hand the predictor column arrays, log what they predicted from in one block per request or
chunk, and count predictions for /metrics a block at a time: no per-row Python beyond the response.
/predict also follows the rollout (serving.rollout): the canary may answer, the shadow is queued after the
answer is built; /predict/batch is the champion's alone.
"""

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from core.contract import label_text
from core.inference.predictor import Prediction, columns_from_records
from core.modeling.compiled import Columns
from core.modeling.explain import top_reasons
from serving import metrics
from serving.batch import BatchInputError, chunks, parse_and_check, read_body
from serving.deps import LogDep, ModelDep, PredictKey, RolloutDep, SettingsDep
from serving.encoders import MEDIA_TYPES, Chunk, OutputFormat, chunk_flags, encoder_for, flag_column
from serving.errors import ERROR_RESPONSES
from serving.model_store import LoadedModel
from serving.prediction_log import PredictionLog
from serving.rollout import log_result, positive_index
from serving.schemas import ContractModels, ErrorOut, PredictionOut, PredictOut, one_or_list

log = logging.getLogger(__name__)

_BATCH_DOC: dict[str, Any] = {
    "responses": {
        200: {
            "content": {media: {} for media in MEDIA_TYPES.values()},
            "description": "One line per input row (CSV, NDJSON), or one Arrow record batch per chunk",
        },
        **ERROR_RESPONSES,
        415: {"model": ErrorOut, "description": "A content type other than CSV, JSON, Parquet or multipart"},
    },
    # The body is read by serving.batch, not by FastAPI: documented here so the OpenAPI page shows it.
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/RecordIn"}}},
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
}


EXPLAIN_DOC = (
    "Add reason codes: the k columns that moved this record's score most, each with the record's value and its "
    "signed contribution, plus the base value (exact for linear models and tree ensembles; method 'unavailable' "
    "with the reason for the other families). 0: none."
)
ExplainK = Annotated[int, Query(ge=0, le=50, description=EXPLAIN_DOC)]


def predictions_router(models: ContractModels) -> APIRouter:
    """A function of the contract's models: the request body's type is generated from the contract."""
    router = APIRouter(tags=["predictions"], dependencies=[PredictKey])
    body_type: Any = one_or_list(models.record)

    @router.post(
        "/predict", response_model=PredictOut, responses=ERROR_RESPONSES, summary="Predict one record or a list"
    )
    async def predict(
        body: Annotated[body_type, Body()], champion: ModelDep, plog: LogDep, rollout: RolloutDep, explain: ExplainK = 0
    ) -> PredictOut:
        started = time.perf_counter()
        items = body if isinstance(body, list) else [body]
        records = [models.values(r) for r in items]
        request_id = uuid.uuid4().hex
        sticky = rollout.config.sticky_column
        model, role = rollout.route(champion, records[0].get(sticky) if sticky else None, request_id)
        columns = columns_from_records(records, model.predictor.contract)
        try:
            result = model.predictor.predict(columns)
        except Exception:
            if role != "canary":
                raise
            # A failing canary costs the client nothing: the champion answers, the error counts against it.
            log.exception("canary prediction by %s v%s failed; the champion answers", model.name, model.version)
            rollout.observe(role, model, None, (time.perf_counter() - started) * 1000)
            model, role = champion, "champion"
            result = model.predictor.predict(columns)
        predicted_ms = (time.perf_counter() - started) * 1000
        reasons: list[Any] = [None] * len(records)
        if explain:
            values = {name: [r.get(name) for r in records] for name in model.predictor.contract.input_columns}
            reasons = top_reasons(model.predictor.explain(columns, result), values, explain)
        ids = [request_id] if len(records) == 1 else [f"{request_id}-{i}" for i in range(len(records))]
        flags = [models.flags(r) for r in records] if models.unknown_allowed else [[] for _ in records]
        probs = result.probabilities
        keys = [label_text(c) for c in result.classes]
        out = [
            PredictionOut(
                request_id=ids[i],
                prediction=result.labels[i],
                probabilities=dict(zip(keys, probs[i].tolist(), strict=True)) if probs is not None else None,
                flags=flags[i],
                explanation=reasons[i],
            )
            for i in range(len(records))
        ]
        latency_ms = (time.perf_counter() - started) * 1000
        flag_text = ["; ".join(f) or None for f in flags]
        log_result(plog, model, columns, ids, result, flag_text, latency_ms, role, wait=False)
        _count(model, result)
        if rollout.active:
            rollout.observe(role, model, result, predicted_ms)
            rollout.shadow(columns, ids, result.labels, flag_text)
        for row_flags in flags:
            for flag in row_flags:
                metrics.UNKNOWN_CATEGORIES.labels(flag.split(":", 1)[0]).inc()
        await plog.room()  # back-pressure from the log's writer: this request waits, the worker goes on
        return PredictOut(
            request_id=request_id, model_name=model.name, model_version=model.version, role=role, predictions=out
        )

    @router.post(
        "/predict/batch",
        summary="Predict a CSV, Parquet or JSON batch; results stream back",
        response_class=StreamingResponse,
        **_BATCH_DOC,
    )
    async def predict_batch(  # noqa: PLR0917 - FastAPI passes the request's parts by name
        request: Request,
        model: ModelDep,
        plog: LogDep,
        settings: SettingsDep,
        output: Annotated[
            OutputFormat,
            Query(alias="format", description="csv (default), ndjson, or arrow: an Arrow IPC stream"),
        ] = "csv",
        explain: Annotated[
            int,
            Query(
                ge=0,
                le=50,
                description=EXPLAIN_DOC + " CSV and Arrow gain the columns explain_method, explained_class, "
                "base_value, raw_output, reason_<i>_column, reason_<i>_value, reason_<i>_contribution (i = 1..k), "
                "other and explain_note; NDJSON an 'explanation' object per row.",
            ),
        ] = 0,
    ) -> StreamingResponse:
        contract = model.predictor.contract
        limits = settings.serving
        try:
            data, kind = await read_body(request)
            # Parsing and checking are CPU work: off the event loop, so other requests keep flowing.
            table, (columns, unknown) = await asyncio.to_thread(
                parse_and_check, data, kind, contract, limits.max_batch_rows
            )
        except BatchInputError as exc:
            raise HTTPException(exc.status, exc.detail) from None
        except (ValueError, TypeError) as exc:  # a value the checks let through but pandas cannot convert
            raise HTTPException(422, f"body: could not read the batch: {str(exc)[:300]}") from None
        for column, mask in unknown.items():
            metrics.UNKNOWN_CATEGORIES.labels(column).inc(int(mask.sum()))
        request_id = uuid.uuid4().hex
        stream = _predict_chunks(
            model, columns, table.num_rows, request_id, limits.batch_chunk_rows, output, plog, unknown, explain
        )
        return StreamingResponse(stream, media_type=MEDIA_TYPES[output], headers={"X-Request-ID": request_id})

    return router


def _predict_chunks(  # noqa: PLR0917 - one call site, all arguments are needed
    model: LoadedModel,
    columns: Columns,
    n_rows: int,
    request_id: str,
    chunk_rows: int,
    output: OutputFormat,
    plog: PredictionLog,
    unknown: dict[str, np.ndarray],
    explain: int = 0,
) -> Iterator[bytes]:
    """Predict chunk by chunk, log each chunk, yield its encoded results; a sync generator, so Starlette
    runs it in a thread."""
    encoder = encoder_for(output, [label_text(c) for c in model.predictor.classes], explain)
    for offset, columns_chunk in chunks(columns, n_rows, chunk_rows):
        started = time.perf_counter()
        result = model.predictor.predict(columns_chunk)
        n = len(result.labels)
        ids = pc.binary_join_element_wise(
            request_id, pc.cast(pa.array(np.arange(offset, offset + n)), pa.string()), "-"
        )
        flagged = chunk_flags(unknown, columns_chunk, offset, n)
        reasons = (
            top_reasons(model.predictor.explain(columns_chunk, result), columns_chunk, explain) if explain else None
        )
        chunk = Chunk(ids=ids, result=result, flagged=flagged, flags=flag_column(flagged, n), explanations=reasons)
        yield encoder.chunk(chunk)
        latency_ms = (time.perf_counter() - started) * 1000 / max(n, 1)
        log_result(plog, model, columns_chunk, ids, result, chunk.flags, latency_ms)
        _count(model, result)
    tail = encoder.end()
    if tail:
        yield tail


def _count(model: LoadedModel, result: Prediction) -> None:
    """Prediction metrics for a whole block at once (a 10,000-row batch is one call per label)."""
    for label, n in Counter(result.labels).items():
        metrics.PREDICTIONS.labels(model.version, str(label)).inc(n)
    probs = result.probabilities
    if probs is not None and probs.shape[1] == 2:
        metrics.observe_many(metrics.SCORES, probs[:, positive_index(model)])
    elif probs is not None and probs.shape[1] > 2:  # multiclass: how sure the model is of its answer
        metrics.observe_many(metrics.SCORES, probs.max(axis=1))
