"""Operations: liveness, readiness, what model serves, Prometheus metrics. Open without a key."""

import asyncio

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import HTMLResponse, JSONResponse

from core.registry.report import REPORT_TAG
from serving import metrics
from serving.deps import ModelDep, StoreDep
from serving.model_store import RegistryError
from serving.schemas import ErrorOut, HealthOut, ModelOut, ReadyOut

REPORT_URL = "/model/report"

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=HealthOut, summary="Liveness: the process answers")
async def health() -> HealthOut:
    return HealthOut()


@router.get("/ready", response_model=ReadyOut, responses={503: {"model": ReadyOut}}, summary="A model is loaded")
async def ready(store: StoreDep) -> Response:
    body = ReadyOut(
        ready=store.current is not None,
        model_version=store.version,
        registry_reachable=store.registry_reachable,
        detail=store.last_error,
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/model", response_model=ModelOut, responses={503: {"model": ErrorOut}}, summary="The serving model")
async def model_info(model: ModelDep) -> ModelOut:
    p = model.predictor
    return ModelOut(
        name=model.name,
        alias=model.alias,
        version=model.version,
        run_id=model.run_id,
        runtime=p.runtime,
        parity_max_abs_diff=p.parity_max_abs_diff,
        fallback_reason=p.fallback_reason,
        family=model.metadata.get("family", model.tags.get("family")),
        threshold=p.threshold,
        metrics=model.metrics,
        data_window_start=model.tags.get("data_window_start"),
        data_window_end=model.tags.get("data_window_end"),
        tags=model.tags,
        card=model.card,
        report_url=REPORT_URL if model.tags.get(REPORT_TAG) and model.run_id else None,
        loaded_at=model.loaded_at,
    )


@router.get(
    REPORT_URL,
    response_class=HTMLResponse,
    # Errors are JSON even though the page is HTML: say so, or the 404's content type is documented as HTML.
    responses={
        404: {"model": ErrorOut, "content": {"application/json": {}}},
        503: {"model": ErrorOut, "content": {"application/json": {}}},
    },
    summary="The serving version's stakeholder report (self-contained HTML, from the registry)",
)
async def model_report(model: ModelDep, store: StoreDep) -> HTMLResponse:
    path = model.tags.get(REPORT_TAG)
    if not path or not model.run_id:
        raise HTTPException(404, f"{model.name} v{model.version} has no report (a version registered by the gate has)")
    try:
        page = await asyncio.to_thread(store.registry.run_artifact, model.run_id, path)
    except RegistryError as exc:
        raise HTTPException(503, f"the report could not be read from the registry: {exc}") from None
    return HTMLResponse(page.decode("utf-8"))


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    body, ctype = metrics.render()
    return Response(body, media_type=ctype)
