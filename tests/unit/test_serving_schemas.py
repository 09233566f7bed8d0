"""The request models generated from the dataset contract."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from core.contract import parse_contract
from core.settings import get_settings
from serving.schemas import build_models


@pytest.fixture(scope="module")
def models() -> Any:
    return build_models(get_settings().contract)


def valid(models: Any, **overrides: Any) -> dict[str, Any]:
    return {**models.example, **overrides}


def error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


def test_the_contract_example_is_valid(models: Any) -> None:
    rec = models.record.model_validate(valid(models))
    assert rec.channel == "pos"  # enum values come out as plain strings
    assert isinstance(rec.event_time, datetime)
    assert models.flags(rec.__dict__) == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"amount": "12"}, "amount"),  # strict: no string coercion
        ({"amount": math.nan}, "amount"),
        ({"amount": math.inf}, "amount"),
        ({"amount": -0.01}, "amount"),
        ({"amount": 100000.01}, "amount"),
        ({"txn_count_1h": 1.5}, "txn_count_1h"),
        ({"txn_count_1h": True}, "txn_count_1h"),
        ({"txn_count_1h": 501}, "txn_count_1h"),
        ({"channel": "carrier_pigeon"}, "channel"),  # closed category
        ({"channel": None}, "channel"),  # not nullable
        ({"merchant_category": ""}, "merchant_category"),
        ({"merchant_category": "x" * 201}, "merchant_category"),
        ({"event_time": "not a time"}, "event_time"),
        ({"coupon": "FREE"}, "coupon"),  # extra field
    ],
)
def test_invalid_values_name_the_field(models: Any, overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        models.record.model_validate(valid(models, **overrides))
    assert any(f == field or f.startswith(f"{field}.") for f in error_fields(exc.value)), exc.value


def test_every_input_column_is_required_even_nullable_ones(models: Any) -> None:
    body = valid(models)
    del body["device"]  # nullable, but must be sent (as null)
    with pytest.raises(ValidationError) as exc:
        models.record.model_validate(body)
    assert error_fields(exc.value) == {"device"}
    assert models.record.model_validate(valid(models, device=None)).device is None


def test_unknown_category_accepted_and_flagged_only_where_allowed(models: Any) -> None:
    rec = models.record.model_validate(valid(models, merchant_category="space_tourism", country="AQ"))
    assert models.flags(rec.__dict__) == [
        "merchant_category: unknown category 'space_tourism'",
        "country: unknown category 'AQ'",
    ]
    with pytest.raises(ValidationError):
        models.record.model_validate(valid(models, device="toaster"))  # device does not allow unknowns


def test_aware_timestamps_are_accepted(models: Any) -> None:
    rec = models.record.model_validate(valid(models, event_time="2026-01-15T15:45:00+02:00"))
    assert rec.event_time.astimezone(UTC).hour == 13


def test_schema_documents_every_field(models: Any) -> None:
    schema = models.record.model_json_schema()
    for name, prop in schema["properties"].items():
        assert prop["description"], name
        assert prop["examples"] == [get_settings().contract.column(name).example], name
    assert schema["properties"]["amount"]["minimum"] == 0.0
    assert schema["properties"]["amount"]["maximum"] == 100000.0
    assert schema["$defs"]["Channel"]["enum"] == ["pos", "online", "atm"]
    assert schema["additionalProperties"] is False
    assert schema["examples"] == [models.example]


def test_feedback_label_must_be_a_contract_class(models: Any) -> None:
    assert models.feedback.model_validate({"request_id": "abc-1", "label": 1}).label == 1
    for bad in ({"request_id": "abc", "label": 2}, {"request_id": "a b", "label": 0}, {"label": 0}):
        with pytest.raises(ValidationError):
            models.feedback.model_validate(bad)


def test_models_follow_another_contract() -> None:
    contract = parse_contract(
        {
            "name": "churn",
            "task": "multiclass",
            "id_column": "customer",
            "timestamp_column": "ts",
            "target": {"name": "plan", "classes": ["free", "pro", "team"]},
            "columns": [
                {"name": "customer", "type": "string"},
                {"name": "ts", "type": "datetime"},
                {"name": "seats", "type": "int", "min": 1, "max": 500, "example": 3},
                {"name": "active", "type": "bool"},
                {"name": "plan", "type": "category", "categories": ["free", "pro", "team"]},
            ],
        }
    )
    models = build_models(contract)
    assert set(models.record.model_fields) == {"customer", "ts", "seats", "active"}
    ok = {"customer": "c1", "ts": "2026-01-01T00:00:00", "seats": 3, "active": True}
    assert models.record.model_validate(ok).seats == 3
    with pytest.raises(ValidationError):
        models.record.model_validate({**ok, "seats": 0})
    assert models.feedback.model_validate({"request_id": "r", "label": "pro"}).label == "pro"
