"""Error bodies: every 4xx names the field at fault, in one shape (`ErrorOut`: detail + errors)."""

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.schemas import ErrorOut

# The error answers the prediction, feedback and admin routes document in the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A body that cannot be parsed at all (not JSON, not UTF-8)"},
    401: {"model": ErrorOut, "description": "Missing or wrong API key"},
    413: {"model": ErrorOut, "description": "Body or batch larger than the configured limit"},
    422: {"model": ErrorOut, "description": "Input that breaks the dataset contract; the message names the field"},
    503: {"model": ErrorOut, "description": "No model loaded yet"},
}

# The tags pydantic puts in an error's location for the record-or-list body union: not field names.
_UNION_TAGS = {"record", "records", "body"}


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if str(p) not in _UNION_TAGS]
    return ".".join(parts) or "body"


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A 422 whose detail reads `field: message; ...`, with the first 100 errors listed."""
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
