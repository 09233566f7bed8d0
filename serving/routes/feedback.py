"""POST /feedback: the true label of an earlier prediction, for monitoring's performance reports."""

from typing import Any

from fastapi import APIRouter

from serving.deps import LogDep, PredictKey
from serving.errors import ERROR_RESPONSES
from serving.schemas import ContractModels, FeedbackOut


def feedback_router(models: ContractModels) -> APIRouter:
    """A function of the contract's models: the label's type (its classes, or a number) comes from the contract."""
    router = APIRouter(tags=["feedback"], dependencies=[PredictKey])
    feedback_type: Any = models.feedback

    @router.post("/feedback", response_model=FeedbackOut, status_code=202, responses=ERROR_RESPONSES)
    async def feedback(body: feedback_type, plog: LogDep) -> FeedbackOut:
        plog.log_feedback(body.request_id, body.label, wait=False)
        await plog.room()
        return FeedbackOut(request_id=body.request_id)

    return router
