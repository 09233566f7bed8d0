"""Request and response models, generated from the dataset contract's rules (core.data.rules).

Every input column of the contract becomes a required field (nullable columns accept null but must
be present), keyed in JSON by the column's own name (``"Body mass (g)"``); the Python field behind it is
the contract's derived identifier. Numbers are strict (no "12" for 12), finite and range-checked;
categories are enums, and where the contract allows unknown categories any other string is accepted too
and flagged in the response; timestamps are read as every entry point reads them (ISO with or without a
time or an offset, or epoch seconds). The contract's description and example document each field on the
OpenAPI page. Labels are the dataset's own: an enum of the classes for feedback, probabilities keyed by
each label's text (core.contract.label_text).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, create_model

from core.contract import Column, DatasetContract
from core.data.rules import ColumnRules, parse_timestamp

MAX_TEXT = 200  # longest accepted string: an id or an unknown category, never a document
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,100}$"


class _Out(BaseModel):
    model_config = ConfigDict(protected_namespaces=())


def _class_name(key: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in key.split("_"))


def _timestamp(value: Any) -> Any:
    """The rules' reading of a timestamp; anything it cannot read fails as pydantic words it."""
    if value is None or isinstance(value, datetime):
        return parse_timestamp(value) if value is not None else None
    parsed = parse_timestamp(value)
    if parsed is None:
        raise ValueError("Input should be a valid datetime (ISO 8601, a date, or epoch seconds)")
    return parsed


def _whole_number(value: Any) -> Any:
    """An int column takes a whole number however JSON spells it (127 or 127.0), as the batch checker does;
    text, booleans and fractions are refused as pydantic words it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _annotation(col: Column, key: str) -> Any:
    constraints = ColumnRules(col).field_constraints()
    base: Any
    if col.type == "float":
        base = Annotated[float, Field(strict=True, allow_inf_nan=False, **constraints)]
    elif col.type == "int":
        base = Annotated[int, BeforeValidator(_whole_number), Field(strict=True, **constraints)]
    elif col.type == "bool":
        base = Annotated[bool, Field(strict=True)]
    elif col.type == "datetime":
        base = Annotated[datetime, BeforeValidator(_timestamp)]
    elif col.type == "category":
        members = enum.Enum(_class_name(key), {c: c for c in col.categories or ()}, type=str)  # type: ignore[misc]
        # An unknown category is a plain string after the enum: accepted, then flagged.
        base = (
            Annotated[
                members | Annotated[str, Field(min_length=1, max_length=MAX_TEXT)], Field(union_mode="left_to_right")
            ]
            if col.allow_unknown
            else members
        )
    else:
        base = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
    return base | None if col.nullable else base


def _description(col: Column) -> str:
    parts = [col.description.strip() or col.name]
    if col.type == "category":
        known = ", ".join(col.categories or ())
        parts.append(f"One of: {known}." + (" Other values are accepted and flagged." if col.allow_unknown else ""))
    if col.min is not None or col.max is not None:
        parts.append(
            f"Range [{col.min if col.min is not None else '-inf'}, {col.max if col.max is not None else 'inf'}]."
        )
    if col.nullable:
        parts.append("May be null.")
    return " ".join(parts)


@dataclass(frozen=True)
class ContractModels:
    """The pydantic models one contract generates."""

    contract: DatasetContract
    record: type[BaseModel]
    feedback: type[BaseModel]
    example: dict[str, Any]
    unknown_allowed: dict[str, frozenset[str]]  # column -> known categories, for columns that flag unknowns
    names: dict[str, str]  # field identifier -> the contract's column name

    def values(self, record: BaseModel) -> dict[str, Any]:
        """A validated record's values keyed by the contract's column names (what the predictor reads)."""
        names = self.names
        return {names[k]: v for k, v in record.__dict__.items()}

    def flags(self, record: dict[str, Any]) -> list[str]:
        out = []
        for name, known in self.unknown_allowed.items():
            value = record.get(name)
            if value is not None and value not in known:
                out.append(unknown_flag(name, value))
        return out


def unknown_flag(column: str, value: Any) -> str:
    """How a prediction flags a category the model never saw (single records and batches alike)."""
    return f"{column}: unknown category {value!r}"


def one_or_list(model: type[BaseModel]) -> Any:
    """A request body of one `model` or a non-empty list of them (/predict, /feedback). The union's tags
    ("record", "records") are the ones error messages leave out of a field's name (serving.errors)."""
    return Annotated[
        Annotated[model, Tag("record")] | Annotated[list[model], Field(min_length=1), Tag("records")],  # type: ignore[valid-type]
        Discriminator(lambda v: "records" if isinstance(v, list) else "record"),
    ]


def build_models(contract: DatasetContract) -> ContractModels:
    fields: dict[str, Any] = {}
    example: dict[str, Any] = {}
    for name in contract.input_columns:
        col = contract.column(name)
        key = contract.identifiers[name]
        examples = [col.example] if col.example is not None else None
        # JSON carries the column's own name (the alias); the identifier only names the Python field.
        field = Field(..., alias=name, title=name, description=_description(col), examples=examples)
        fields[key] = (_annotation(col, key), field)
        example[name] = col.example
    record = create_model(
        "RecordIn",
        __config__=ConfigDict(
            extra="forbid",
            use_enum_values=True,
            json_schema_extra={"examples": [example]},
            protected_namespaces=(),
            serialize_by_alias=True,
        ),
        __doc__=f"One {contract.name} record: every input column of the dataset contract.",
        **fields,
    )
    label: Any
    if contract.is_classification:
        label = Literal[tuple(contract.classes)]
    else:
        label = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    target = contract.column(contract.target.name)
    feedback = create_model(
        "FeedbackIn",
        __config__=ConfigDict(extra="forbid"),
        __doc__="The true label for an earlier prediction, once it is known.",
        request_id=(str, Field(..., pattern=REQUEST_ID_PATTERN, description="The id a prediction returned.")),
        label=(label, Field(..., description=target.description or "The true label.", examples=[target.example])),
    )
    unknown = {c.name: frozenset(c.categories or ()) for c in contract.features if c.allow_unknown}
    names = {contract.identifiers[n]: n for n in contract.input_columns}
    return ContractModels(
        contract=contract, record=record, feedback=feedback, example=example, unknown_allowed=unknown, names=names
    )


# ---- responses ----------------------------------------------------------------------------------

# bool first: a boolean label stays true/false in JSON (smart unions would keep 1 an int either way).
Label = bool | int | float | str


class ReasonOut(_Out):
    column: str = Field(description="The contract's column (an encoded category or time feature counts for it).")
    value: Any = Field(description="The record's value of that column.")
    contribution: float = Field(description="Signed contribution to the explained output (positive: raises it).")


class ExplanationOut(_Out):
    """Why the model scored this record as it did: base_value + every column's contribution == raw_output.

    `reasons` are the k largest contributions by size; `other` is the sum of the rest. method `linear`
    (coefficients) and `tree_shap` (TreeSHAP) are exact; `unavailable` (SVM, MLP) says why instead of
    returning an approximation.
    """

    method: Literal["linear", "tree_shap", "unavailable"]
    output: Literal["log_odds", "logit", "probability", "value"] | None = Field(
        None,
        description="What is explained: log-odds of the positive class (binary), logit of the explained class "
        "(multiclass), a random forest's probability, or the predicted value (regression).",
    )
    explained_class: str | None = Field(None, description="The class whose output is explained (classifiers).")
    base_value: float | None = Field(None, description="The output before any column is considered.")
    raw_output: float | None = None
    reasons: list[ReasonOut] = Field(default_factory=list)
    other: float | None = Field(None, description="The sum of the contributions not listed in reasons.")
    reason: str | None = Field(None, description="Why there is no explanation (method unavailable).")


class PredictionOut(_Out):
    request_id: str = Field(description="Send this id with the true label to POST /feedback.")
    prediction: Label
    probabilities: dict[str, float] | None = Field(None, description="Class probabilities (classifiers only).")
    flags: list[str] = Field(default_factory=list, description="Accepted but unusual input, e.g. unknown categories.")
    explanation: ExplanationOut | None = Field(None, description="Reason codes, with ?explain=k.")


class ExplainOut(_Out):
    request_id: str
    model_name: str
    model_version: str = Field(description="The version that made the logged prediction (and explains it).")
    timestamp: datetime = Field(description="When the prediction was made.")
    prediction: Label | None
    explanation: ExplanationOut


class PredictOut(_Out):
    request_id: str
    model_name: str
    model_version: str = Field(description="The version that answered.")
    role: Literal["champion", "canary"] = Field(
        "champion", description="champion, or canary when the challenger answered (serving.rollout)."
    )
    predictions: list[PredictionOut]


class FeedbackOut(_Out):
    request_id: str
    accepted: bool = True


class FeedbackListOut(_Out):
    accepted: int = Field(description="Labels received (every item of the list; a bad item refuses the whole list).")


class HealthOut(_Out):
    status: Literal["ok"] = "ok"


class ReadyOut(_Out):
    ready: bool
    model_version: str | None
    registry_reachable: bool
    detail: str | None = None


class ModelOut(_Out):
    name: str
    alias: str
    version: str
    run_id: str | None
    runtime: str = Field(description="onnx, numpy (compiled features + scikit-learn estimator) or sklearn.")
    parity_max_abs_diff: float | None
    fallback_reason: str | None
    family: str | None
    threshold: float | None
    metrics: dict[str, float]
    data_window_start: str | None
    data_window_end: str | None
    tags: dict[str, str]
    card: str
    report_url: str | None = Field(
        None, description="The version's stakeholder report (self-contained HTML), an artifact of its run in MLflow."
    )
    loaded_at: datetime


class ReloadOut(_Out):
    changed: bool
    model_version: str | None
    detail: str | None = None


class WebhookOut(_Out):
    accepted: bool
    nudged: bool  # the delivery was about the served alias: every worker checks the registry now
    detail: str | None = None


class RolloutIn(_Out):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "shadow", "canary"] | None = Field(None, description="Unset: unchanged.")
    canary_share: float | None = Field(None, ge=0, le=1, description="Share of entities the canary answers.")
    reason: str = Field("set through /admin/rollout", max_length=500, description="Recorded with the change.")


class RolloutOut(_Out):
    mode: Literal["off", "shadow", "canary"]
    canary_share: float
    alias: str = Field(description="The registry alias of the second model.")
    sticky_column: str | None = Field(description="The column a canary entity is recognised by; null: request id.")
    changed_at: str
    reason: str
    champion_version: str | None
    challenger_version: str | None = Field(description="Null: no version holds the alias (or not loaded yet).")
    challenger_error: str | None = None
    shadow_queue: dict[str, int] = Field(description="size, capacity and dropped (this worker's).")
    limits: dict[str, float | int | None]
    stats: dict[str, Any] = Field(description="This worker's figures over the rollback window, per role.")
    last_decision: dict[str, Any] | None = Field(None, description="The last automatic rollback, if any.")


class ErrorOut(_Out):
    detail: str
    errors: list[dict[str, Any]] = Field(default_factory=list)
