"""The dataset contract: one YAML file that names every column and what it may hold.

Everything else derives from it: validation (core.data.validation), the feature preprocessor
(core.modeling.features), the API request model (serving), the model signature and the drift column
mapping (monitoring). A contract that is itself wrong is refused at load with a message that
names the fault.
"""

from __future__ import annotations

from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ColumnType = Literal["float", "int", "bool", "category", "string", "datetime"]
Task = Literal["binary", "multiclass", "regression"]
TimeFeature = Literal["hour_of_day", "day_of_week", "month"]

NUMERIC_TYPES = frozenset({"float", "int", "bool"})


class ContractError(ValueError):
    """The dataset contract itself is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Column(_Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
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
    positive_class: int | str | None = None
    classes: tuple[int | str, ...] | None = None
    label_delay_days: float = 0.0


class DatasetContract(_Strict):
    name: str
    description: str = ""
    task: Task
    id_column: str
    timestamp_column: str
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
        known = set(names)

        def need(role: str, name: str) -> None:
            if name not in known:
                raise ValueError(f"{role} '{name}' is not one of the contract's columns {names}")

        need("id_column", self.id_column)
        need("timestamp_column", self.timestamp_column)
        need("target", self.target.name)
        for s in self.slice_columns:
            need("slice column", s)
        if self.column(self.timestamp_column).type != "datetime":
            raise ValueError(f"timestamp_column '{self.timestamp_column}' must have type datetime")
        target = self.column(self.target.name)
        if target.nullable:
            raise ValueError(f"target '{target.name}' must not be nullable")
        if self.task == "regression":
            if target.type not in ("float", "int"):
                raise ValueError(f"task regression needs a numeric target, '{target.name}' is {target.type}")
        else:
            if not self.target.classes or len(self.target.classes) < 2:
                raise ValueError(f"task {self.task} needs target.classes with at least two classes")
            if self.task == "binary":
                if len(self.target.classes) != 2:
                    raise ValueError(f"task binary needs exactly two target.classes, got {list(self.target.classes)}")
                if self.target.positive_class not in self.target.classes:
                    raise ValueError(
                        f"target.positive_class {self.target.positive_class!r} is not one of "
                        f"target.classes {list(self.target.classes)}"
                    )
        if not self.feature_columns:
            raise ValueError("the contract has no feature columns (every column is id, timestamp or target)")
        return self

    # ---- derived views -------------------------------------------------------------------------
    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

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
    def input_columns(self) -> list[str]:
        """What a caller sends to the model: id, timestamp and features (everything but the target)."""
        return [c.name for c in self.columns if c.name != self.target.name]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def is_classification(self) -> bool:
        return self.task in ("binary", "multiclass")


def load_contract(path: str | Path) -> DatasetContract:
    """Read and check a contract; raise ContractError naming each fault."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
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
            faults.append(f"{where}: {msg}" if where else msg)
        raise ContractError(f"dataset contract {source} is invalid:\n  - " + "\n  - ".join(faults)) from None


def _column_name_at(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    try:
        return str(raw["columns"][loc[1]]["name"])
    except (KeyError, IndexError, TypeError):
        return "?"
