"""/admin: operator actions, behind the admin key (no key configured: every route answers 403)."""

import asyncio

from fastapi import APIRouter, HTTPException

from serving.deps import AdminKey, RolloutDep, StoreDep
from serving.errors import ERROR_RESPONSES
from serving.rollout import Rollout
from serving.schemas import ReloadOut, RolloutIn, RolloutOut

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminKey])


@router.post(
    "/reload", response_model=ReloadOut, responses=ERROR_RESPONSES, summary="Check the alias now; swap if it moved"
)
async def reload_model(store: StoreDep) -> ReloadOut:
    """Checks the alias in this worker now and nudges the service's other workers to do the same."""
    store.board.nudge("POST /admin/reload")
    changed = await asyncio.to_thread(store.refresh)
    return ReloadOut(changed=changed, model_version=store.version, detail=store.last_error)


def _status(rollout: Rollout, store: StoreDep) -> RolloutOut:
    state, config = rollout.state, rollout.config
    decisions = rollout.decisions()
    return RolloutOut(
        mode=state.mode,
        canary_share=state.canary_share,
        alias=config.alias,
        sticky_column=config.sticky_column,
        changed_at=state.changed_at,
        reason=state.reason,
        champion_version=store.version,
        challenger_version=rollout.challenger.version,
        challenger_error=rollout.challenger.last_error,
        shadow_queue={
            "size": rollout._queue.qsize(),
            "capacity": config.shadow_queue,
            "dropped": rollout.dropped,
        },
        limits=config.rollback.model_dump(),
        stats=rollout.stats(),
        last_decision=decisions[-1] if decisions else None,
    )


@router.get(
    "/rollout", response_model=RolloutOut, responses=ERROR_RESPONSES, summary="Shadow/canary: mode, versions, stats"
)
async def get_rollout(rollout: RolloutDep, store: StoreDep) -> RolloutOut:
    return await asyncio.to_thread(_status, rollout, store)


@router.put(
    "/rollout",
    response_model=RolloutOut,
    responses={**ERROR_RESPONSES, 409: ERROR_RESPONSES[422] | {"description": "No challenger to shadow or canary"}},
    summary="Switch the rollout mode or the canary share (every worker follows within a second)",
)
async def put_rollout(change: RolloutIn, rollout: RolloutDep, store: StoreDep) -> RolloutOut:
    mode = change.mode or rollout.state.mode
    share = rollout.state.canary_share if change.canary_share is None else change.canary_share
    if mode != "off":
        await asyncio.to_thread(rollout.challenger.refresh)  # the alias may have moved since the last poll
        if rollout.challenger.current is None:
            detail = rollout.challenger.last_error or "not loaded"
            raise HTTPException(
                409,
                f"mode {mode} needs a challenger: no version of {rollout.settings.model_name} could be loaded from "
                f"alias {rollout.config.alias!r} ({detail}); set it with `mlops challenger VERSION`",
            )
    rollout.set_state(mode, share, change.reason)
    return await asyncio.to_thread(_status, rollout, store)
