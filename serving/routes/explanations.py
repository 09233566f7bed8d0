"""GET /explain/{request_id}: reason codes for a prediction already made, by the version that made it.

The prediction log (core.predictions) holds every input column of every prediction, with the model
version: the inputs are read back and explained by that version (loaded from the registry if it no
longer serves). A prediction is in the log once the writer has flushed it (`serving.log_flush_s`).
"""

import asyncio
from datetime import datetime
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, HTTPException, Path, Query

from core.inference.predictor import columns_from_frame
from core.modeling.explain import top_reasons
from core.predictions import LogSchema, read_prediction
from serving.deps import PredictKey, SettingsDep, StoreDep
from serving.errors import ERROR_RESPONSES
from serving.model_store import LoadedModel, ModelStore, RegistryError
from serving.schemas import REQUEST_ID_PATTERN, ExplainOut, ExplanationOut

router = APIRouter(tags=["predictions"], dependencies=[PredictKey])


def _explain_logged(store: ModelStore, url: str, request_id: str, k: int) -> ExplainOut:
    """Blocking: reads the log, may download a model version. Run in a thread."""
    schema = LogSchema(store.settings.contract)
    try:
        row = read_prediction(url, request_id)
    except Exception as exc:  # the store is down or unreadable: say so, do not 500
        raise HTTPException(503, f"the prediction log cannot be read: {str(exc)[:200]}") from None
    if row.empty:
        raise HTTPException(404, f"request_id: no prediction {request_id!r} logged (yet: the log writes in batches)")
    logged = row.iloc[0]
    version = str(logged["model_version"])
    try:
        model: LoadedModel = store.model_for_version(version)
    except RegistryError as exc:
        raise HTTPException(503, f"model version {version} cannot be loaded from the registry: {exc}") from None
    except Exception as exc:  # a version that no longer loads (deleted, refused by the loader)
        raise HTTPException(409, f"model version {version} cannot be loaded to explain it: {str(exc)[:300]}") from None
    inputs = schema.inputs(row)
    contract = model.predictor.contract
    columns = columns_from_frame(inputs, contract)
    result = model.predictor.predict(columns)
    if contract.task == "multiclass":  # explain the class that was predicted then, as the log says
        result.labels = [_logged_label(logged["prediction"], result.classes)]
    [answer] = top_reasons(model.predictor.explain(columns, result), {str(c): inputs[c].tolist() for c in inputs}, k)
    return ExplainOut(
        request_id=request_id,
        model_name=str(logged["model_name"]),
        model_version=version,
        timestamp=_utc(logged["timestamp"]),
        prediction=_plain(logged["prediction"]),
        explanation=ExplanationOut(**answer),
    )


def _logged_label(value: Any, classes: list[Any]) -> Any:
    """The logged label (text for string and boolean labels) as one of the model's classes."""
    for c in classes:
        if str(c) == str(value) or c == value:
            return c
    return value


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


@router.get(
    "/explain/{request_id}",
    response_model=ExplainOut,
    responses={
        **ERROR_RESPONSES,
        404: {"description": "No logged prediction has this request id"},
        409: {"description": "The version that made the prediction no longer loads"},
    },
    summary="Reason codes for a logged prediction, by the model version that made it",
)
async def explain_logged(
    request_id: Annotated[str, Path(pattern=REQUEST_ID_PATTERN)],
    store: StoreDep,
    settings: SettingsDep,
    k: Annotated[int, Query(ge=1, le=50, description="How many reasons (largest contributions) to list.")] = 3,
) -> ExplainOut:
    return await asyncio.to_thread(_explain_logged, store, settings.prediction_log_url, request_id, k)


def _utc(value: object) -> datetime:
    """The log keeps naive UTC times; the API answers with an explicit offset (RFC 3339 date-time)."""
    ts = pd.Timestamp(value)  # type: ignore[arg-type]
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()
