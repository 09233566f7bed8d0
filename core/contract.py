"""The dataset contract: one YAML file that names every column and what it may hold.

Everything else derives from it: the compiled checker (core.data.rules) that collection, the batch API and
monitoring run, the feature preprocessor (core.modeling.features), the API request model (serving), the
model signature and the drift column mapping (monitoring). A contract that is itself wrong is refused
at load with a message that names the fault.

Columns keep the names the source gives them: any non-empty string (spaces, ``/``, parentheses, leading
digits, non-ASCII). Wherever a code-safe identifier is needed (pydantic field names, SQL columns of the
prediction log, file names) it is :attr:`DatasetContract.identifiers`, derived here and nowhere else; two names
that derive the same identifier are refused at load, naming both.

The id and timestamp columns are optional. Without an id, collection derives a stable row key from each
row's content (:data:`ROW_KEY`). Without a timestamp the data is unordered: collection takes a full
snapshot each run, splits are random (stratified for classification), and time features and
time-ordered cross-validation are off.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core import yaml_io

ColumnType = Literal["float", "int", "bool", "category", "string", "datetime"]
Task = Literal["binary", "multiclass", "regression"]
TimeFeature = Literal["hour_of_day", "day_of_week", "month"]
Label = int | str | bool

NUMERIC_TYPES = frozenset({"float", "int", "bool"})
# The column collection adds to a snapshot when the contract names no id column: a key derived from
# the row's content (core.data.rules.row_keys). A contract may not name a column this way.
ROW_KEY = "_row_key"


class ContractError(ValueError):
    """The dataset contract itself is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def identifier(name: str) -> str:
    """A code-safe identifier for a column name: ASCII letters, digits and underscores, not starting with a
    digit. ``"Body mass (kg)"`` -> ``"Body_mass_kg"``, ``"2nd/3rd"`` -> ``"c_2nd_3rd"``, ``"émission"`` ->
    ``"emission"``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    key = re.sub(r"[^0-9A-Za-z_]+", "_", ascii_name).strip("_")
    key = re.sub(r"_+", "_", key)
    if not key:
        key = "c"
    if key[0].isdigit():
        key = f"c_{key}"
    return key


class Column(_Strict):
    name: Annotated[str, Field(min_length=1)]
    type: ColumnType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] | None = None
    allow_unknown: bool = False
    description: str = ""
    example: Any = None

    @model_validator(mode="after")
    def _check(self) -> Column:
        if not self.name.strip():
            raise ValueError("a column name must not be blank")
        if self.name == ROW_KEY:
            raise ValueError(f"column name '{ROW_KEY}' is reserved for the row key collection derives")
        if self.type == "category":
            if not self.categories:
                raise ValueError(f"column '{self.name}': type category needs a non-empty 'categories' list")
            dupes = [c for c, n in Counter(self.categories).items() if n > 1]
            if dupes:
                raise ValueError(f"column '{self.name}': duplicate categories {dupes}")
        elif self.categories is not None:
            raise ValueError(f"column '{self.name}': 'categories' is only for type category, not {self.type}")
        if (self.min is not None or self.max is not None) and self.type not in ("float", "int"):
            raise ValueError(f"column '{self.name}': min/max only apply to float and int, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"column '{self.name}': min {self.min} is greater than max {self.max}")
        if self.allow_unknown and self.type != "category":
            raise ValueError(f"column '{self.name}': allow_unknown is only for type category")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.type in NUMERIC_TYPES


class Target(_Strict):
    name: str
    positive_class: Label | None = None
    classes: tuple[Label, ...] | None = None
    label_delay_days: float = Field(0.0, ge=0.0)


class DatasetContract(_Strict):
    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    task: Task
    id_column: str | None = None
    timestamp_column: str | None = None
    target: Target
    slice_columns: tuple[str, ...] = ()
    derived_time_features: tuple[TimeFeature, ...] = ()
    columns: tuple[Column, ...]

    @model_validator(mode="after")
    def _check(self) -> DatasetContract:
        names = [c.name for c in self.columns]
        dupes = sorted(n for n, k in Counter(names).items() if k > 1)
        if dupes:
            raise ValueError(f"duplicate column names: {dupes}")
        by_key: dict[str, list[str]] = {}
        for name in names:
            by_key.setdefault(identifier(name), []).append(name)
        clashes = [f"{names} -> '{key}'" for key, names in by_key.items() if len(names) > 1]
        if clashes:
            raise ValueError("column names that derive the same identifier (rename one of each): " + "; ".join(clashes))
        known = set(names)

        def need(role: str, name: str) -> None:
            if name not in known:
                raise ValueError(f"{role} '{name}' is not one of the contract's columns {names}")

        if self.id_column is not None:
            need("id_column", self.id_column)
            if self.column(self.id_column).nullable:
                raise ValueError(f"id_column '{self.id_column}' must not be nullable")
        if self.timestamp_column is not None:
            need("timestamp_column", self.timestamp_column)
            if self.column(self.timestamp_column).type != "datetime":
                raise ValueError(f"timestamp_column '{self.timestamp_column}' must have type datetime")
        elif self.derived_time_features:
            raise ValueError("derived_time_features need a timestamp_column")
        elif self.target.label_delay_days:
            raise ValueError("target.label_delay_days needs a timestamp_column (the delay counts from it)")
        need("target", self.target.name)
        for s in self.slice_columns:
            need("slice column", s)
        target = self.column(self.target.name)
        if target.nullable:
            raise ValueError(f"target '{target.name}' must not be nullable")
        if self.target.name in (self.id_column, self.timestamp_column):
            raise ValueError(f"target '{target.name}' cannot also be the id or timestamp column")
        if self.task == "regression":
            if target.type not in ("float", "int"):
                raise ValueError(f"task regression needs a numeric target, '{target.name}' is {target.type}")
        else:
            self._check_classes(target)
        if not self.feature_columns:
            raise ValueError("the contract has no feature columns (every column is id, timestamp or target)")
        return self

    def _check_classes(self, target: Column) -> None:
        classes = self.target.classes
        if not classes or len(classes) < 2:
            raise ValueError(f"task {self.task} needs target.classes with at least two classes")
        if len({str(c) for c in classes}) != len(classes):
            raise ValueError(f"target.classes has duplicates: {list(classes)}")
        if target.type == "datetime":
            raise ValueError(f"target '{target.name}' of a {self.task} task cannot be a datetime")
        kind = {"int": int, "bool": bool, "string": str, "category": str, "float": float}[target.type]
        wrong = [c for c in classes if not _is_label_of(c, kind)]
        if wrong:
            raise ValueError(
                f"target.classes {wrong} do not fit the type {target.type} of column '{target.name}' "
                "(quote labels for a string or category target)"
            )
        if target.type == "category" and set(map(str, classes)) != set(target.categories or ()):
            raise ValueError(
                f"target.classes {list(classes)} must equal the categories of column '{target.name}' "
                f"{list(target.categories or ())}"
            )
        if self.task == "binary":
            if len(classes) != 2:
                raise ValueError(f"task binary needs exactly two target.classes, got {list(classes)}")
            if self.target.positive_class is None:
                raise ValueError(f"task binary needs target.positive_class: one of {list(classes)}")
            if self.target.positive_class not in classes:
                raise ValueError(
                    f"target.positive_class {self.target.positive_class!r} is not one of target.classes {list(classes)}"
                )

    # ---- derived views -------------------------------------------------------------------------
    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @cached_property
    def identifiers(self) -> dict[str, str]:
        """Column name -> its code-safe identifier (unique within the contract). Not called `keys`: a
        model with a `keys` attribute reads as a mapping to `dict(model)`, which Prefect calls."""
        return {c.name: identifier(c.name) for c in self.columns}

    @cached_property
    def features(self) -> tuple[Column, ...]:
        """Columns the model learns from directly (not id, timestamp or target)."""
        skip = {self.id_column, self.timestamp_column, self.target.name}
        return tuple(c for c in self.columns if c.name not in skip)

    @property
    def feature_columns(self) -> list[str]:
        return [c.name for c in self.features]

    @property
    def numeric_features(self) -> list[str]:
        return [c.name for c in self.features if c.is_numeric]

    @property
    def categorical_features(self) -> list[str]:
        return [c.name for c in self.features if c.type in ("category", "string")]

    @property
    def datetime_features(self) -> list[str]:
        """Feature columns of type datetime other than the timestamp (the model does not read them)."""
        return [c.name for c in self.features if c.type == "datetime"]

    @property
    def input_columns(self) -> list[str]:
        """What a caller sends to the model: id, timestamp and features (everything but the target)."""
        return [c.name for c in self.columns if c.name != self.target.name]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def is_classification(self) -> bool:
        return self.task in ("binary", "multiclass")

    @property
    def key_column(self) -> str:
        """The column that identifies a row: the id column, or the row key collection derives."""
        return self.id_column or ROW_KEY

    @property
    def is_ordered(self) -> bool:
        """Whether rows have a time order (a timestamp column)."""
        return self.timestamp_column is not None

    @property
    def uses_time_features(self) -> bool:
        return bool(self.derived_time_features) and self.timestamp_column is not None

    @property
    def time_feature_columns(self) -> list[str]:
        """The column the derived time features are computed from (the timestamp), when there are any."""
        return [self.timestamp_column] if self.derived_time_features and self.timestamp_column else []

    @property
    def classes(self) -> list[Label]:
        """The target's labels (classification), in the contract's order."""
        return list(self.target.classes or ())


def label_text(value: Any) -> str:
    """A label as text, the one way everywhere a label becomes a string (JSON keys, CSV columns, the log):
    ``True`` -> ``"true"`` (as JSON writes it), ``1`` and ``1.0`` -> ``"1"``, ``"yes"`` -> ``"yes"``."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item") and not isinstance(value, str):
        return label_text(value.item())
    return str(value)


def _is_label_of(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def load_contract(path: str | Path) -> DatasetContract:
    """Read and check a contract; raise ContractError naming each fault."""
    path = Path(path)
    try:
        raw = yaml_io.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ContractError(f"dataset contract not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ContractError(f"dataset contract {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ContractError(f"dataset contract {path} must be a mapping, got {type(raw).__name__}")
    return parse_contract(raw, source=str(path))


def parse_contract(raw: dict[str, Any], source: str = "<dict>") -> DatasetContract:
    try:
        return DatasetContract.model_validate(raw)
    except ValidationError as exc:
        faults = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "literal_error" and "columns" in where:
                col = _column_name_at(raw, err["loc"])
                msg = f"unknown type {err.get('input')!r} for column '{col}'; {msg}"
            elif err["type"] == "extra_forbidden":
                msg = f"unknown key {err['loc'][-1]!r}"
            faults.append(f"{where}: {msg}" if where else msg)
        raise ContractError(f"dataset contract {source} is invalid:\n  - " + "\n  - ".join(faults)) from None


def _column_name_at(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    try:
        return str(raw["columns"][loc[1]]["name"])
    except (KeyError, IndexError, TypeError):
        return "?"
