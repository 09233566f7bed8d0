"""The route dependencies, as `Annotated` aliases: a handler names what it needs by type.

Everything here reads `request.app.state`, which `serving.app.create_app` fills: the settings at
creation, the model store and the prediction log when the lifespan starts.

All `async def`: FastAPI runs a plain `def` dependency in a worker thread, and a thread hop per
dependency cost more than the prediction itself. Neither this module nor the routes use
`from __future__ import annotations`: FastAPI reads annotations at runtime, and the prediction routes
are typed with request models built when the app is created, which a string could not name.
"""

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

from core.settings import Settings
from serving.model_store import LoadedModel, ModelStore
from serving.prediction_log import PredictionLog
from serving.rollout import Rollout

API_KEY_HEADER = "X-API-Key"
_api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="API key")


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


async def get_rollout(request: Request) -> Rollout:
    rollout: Rollout = request.app.state.rollout
    return rollout


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
LogDep = Annotated[PredictionLog, Depends(get_prediction_log)]
RolloutDep = Annotated[Rollout, Depends(get_rollout)]
APIKeyDep = Annotated[str | None, Depends(_api_key)]


def _key_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


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


# Router-level guards: `APIRouter(dependencies=[PredictKey])`.
PredictKey = Depends(require_predict_key)
AdminKey = Depends(require_admin_key)
