"""Operations: liveness, readiness, what model serves, Prometheus metrics. Open without a key."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from serving import metrics
from serving.deps import ModelDep, StoreDep
from serving.schemas import ErrorOut, HealthOut, ModelOut, ReadyOut

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
        loaded_at=model.loaded_at,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    body, ctype = metrics.render()
    return Response(body, media_type=ctype)
