"""/admin: operator actions, behind the admin key (no key configured: every route answers 403)."""

import asyncio

from fastapi import APIRouter

from serving.deps import AdminKey, StoreDep
from serving.errors import ERROR_RESPONSES
from serving.schemas import ReloadOut

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminKey])


@router.post(
    "/reload", response_model=ReloadOut, responses=ERROR_RESPONSES, summary="Check the alias now; swap if it moved"
)
async def reload_model(store: StoreDep) -> ReloadOut:
    """Checks the alias in this worker now and nudges the service's other workers to do the same."""
    store.board.nudge("POST /admin/reload")
    changed = await asyncio.to_thread(store.refresh)
    return ReloadOut(changed=changed, model_version=store.version, detail=store.last_error)
