"""POST /feedback: the true labels of earlier predictions, for monitoring's performance reports.

One label, or a list of them in one request: labels usually arrive in bulk (a day's chargebacks, a
review queue's verdicts), and a request per label costs the service an HTTP round trip each.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body

from serving.deps import LogDep, PredictKey
from serving.errors import ERROR_RESPONSES
from serving.schemas import ContractModels, FeedbackListOut, FeedbackOut, one_or_list


def feedback_router(models: ContractModels) -> APIRouter:
    """A function of the contract's models: the label's type (its classes, or a number) comes from the contract."""
    router = APIRouter(tags=["feedback"], dependencies=[PredictKey])
    body_type: Any = one_or_list(models.feedback)

    @router.post(
        "/feedback",
        response_model=FeedbackOut | FeedbackListOut,
        status_code=202,
        responses=ERROR_RESPONSES,
        summary="The true label of one prediction, or of a list of them",
    )
    async def feedback(body: Annotated[body_type, Body()], plog: LogDep) -> FeedbackOut | FeedbackListOut:
        # Validated as a whole first: one bad item refuses the request (422 naming the item), nothing is half-logged.
        items = body if isinstance(body, list) else [body]
        for item in items:
            plog.log_feedback(item.request_id, item.label, wait=False)
        await plog.room()
        if isinstance(body, list):
            return FeedbackListOut(accepted=len(items))
        return FeedbackOut(request_id=body.request_id)

    return router
