"""Validation derived from the dataset contract: a pandera schema and a row-level split.

``validate_batch`` splits a raw batch into valid rows (typed as the contract says) and quarantined
rows (original values kept as strings, one human-readable reason per row, e.g.
``"amount: 250000.0 above max 100000.0; channel: null in non-nullable column"``). The per-row checks
are vectorised pandas/numpy, because pandera's lazy error reports cost seconds per 250k-row chunk;
the pandera schema built from the same contract is then checked on the valid rows, so the two can
never disagree silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa

from core.contract import Column, DatasetContract

REASON = "_reason"
# At most this many valid rows per batch are re-checked by the pandera schema (a consistency check
# of the vectorised rules, not the gate itself): keeps a 250k-row chunk well under a second.
PANDERA_SAMPLE_ROWS = 20_000


class SchemaMismatchError(ValueError):
    """The batch's columns do not match the contract (a contract column is missing)."""

    def __init__(self, missing: list[str], extra: list[str]) -> None:
        self.missing = missing
        self.extra = extra
        msg = f"schema mismatch: the source lacks contract column(s) {missing}"
        if extra:
            msg += f" (it has columns the contract does not name: {extra})"
        super().__init__(msg)


@dataclass
class BatchValidation:
    """One batch split into valid and quarantined rows, with counts for the manifest."""

    valid: pd.DataFrame
    quarantined: pd.DataFrame
    fault_counts: Counter[str] = field(default_factory=Counter)  # "amount out of range" -> rows
    column_counts: Counter[str] = field(default_factory=Counter)  # "amount" -> rows with a fault there
    unknown_categories: dict[str, Counter[str]] = field(default_factory=dict)  # accepted, flagged
    extra_columns: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.valid) + len(self.quarantined)


def check_columns(columns: Iterable[str], contract: DatasetContract) -> tuple[list[str], list[str]]:
    """(missing contract columns, extra columns the contract does not name)."""
    present = list(columns)
    missing = [c for c in contract.column_names if c not in present]
    extra = [c for c in present if c not in contract.column_names]
    return missing, extra


# ---- the declared schema ------------------------------------------------------------------------
def _pandera_dtype(col: Column) -> str:
    return {
        "float": "float64",
        "int": "Int64" if col.nullable else "int64",
        "bool": "boolean",
        "category": "object",
        "string": "object",
        "datetime": "datetime64[ns]",
    }[col.type]


def build_schema(contract: DatasetContract) -> pa.DataFrameSchema:
    """The pandera schema of a valid, typed batch (what :func:`validate_batch` returns as ``valid``)."""
    columns: dict[str, pa.Column] = {}
    for col in contract.columns:
        checks: list[pa.Check] = []
        if col.min is not None:
            checks.append(pa.Check.ge(col.min))
        if col.max is not None:
            checks.append(pa.Check.le(col.max))
        if col.type == "category" and not col.allow_unknown and col.categories:
            checks.append(pa.Check.isin(list(col.categories)))
        if col.name == contract.target.name and contract.is_classification and contract.target.classes:
            checks.append(pa.Check.isin(list(contract.target.classes)))
        columns[col.name] = pa.Column(_pandera_dtype(col), checks=checks, nullable=col.nullable)
    return pa.DataFrameSchema(columns, strict=True, unique=[contract.id_column], name=contract.name)


# ---- row-level validation -----------------------------------------------------------------------
class _Faults:
    """Collects (rows, message) per fault kind without building strings for good rows."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.messages: list[pd.Series] = []
        self.fault_counts: Counter[str] = Counter()
        self.column_rows: dict[str, np.ndarray] = {}

    def add(self, column: str, kind: str, mask: np.ndarray, template: str, values: pd.Series | None = None) -> None:
        """Record rows in ``mask``; ``template`` gets each row's value at ``{}`` (only bad rows are formatted)."""
        if not mask.any():
            return
        positions = np.flatnonzero(mask)
        if values is None:
            texts = [f"{column}: {template}"] * positions.size
        else:
            texts = [f"{column}: " + template.format(v) for v in values.to_numpy()[positions]]
        self.messages.append(pd.Series(texts, index=positions, dtype=object))
        self.bad |= mask
        self.fault_counts[f"{column} {kind}"] += int(positions.size)
        prev = self.column_rows.get(column)
        self.column_rows[column] = mask if prev is None else (prev | mask)

    def reasons(self) -> pd.Series:
        if not self.messages:
            return pd.Series(dtype=object)
        allmsg = pd.concat(self.messages)
        return allmsg.groupby(level=0, sort=True).agg("; ".join)


def _coerce_numeric(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.astype("float64")
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype("float64")
    return pd.to_numeric(raw, errors="coerce").astype("float64")


_BOOL_WORDS = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0, "t": 1.0, "f": 0.0}


def _coerce_bool(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(raw) or pd.api.types.is_numeric_dtype(raw):
        out = raw.astype("float64")
        return out.where(out.isin([0.0, 1.0]))
    return raw.astype(str).str.strip().str.lower().map(_BOOL_WORDS).astype("float64").where(raw.notna())


def to_timestamps(raw: pd.Series) -> pd.Series:
    """Naive-UTC datetime64[ns]; anything unparseable becomes NaT."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        out = raw
    else:
        out = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=True)
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out.astype("datetime64[ns]")


def _limit(value: float | None, kind: str) -> str:
    return str(int(value)) if kind == "int" and value is not None else str(value)


def _as_text(value: object) -> str | None:
    """A quarantined value as text; integral floats (an int column read with NULLs) lose the '.0'."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def _check_column(col: Column, raw: pd.Series, faults: _Faults, contract: DatasetContract) -> pd.Series:
    """Typed values of one column; records its faults."""
    present = raw.notna().to_numpy()
    if col.type in ("float", "int"):
        typed = _coerce_numeric(raw)
        wrong = present & typed.isna().to_numpy()
        faults.add(col.name, "wrong type", wrong, "wrong type '{}'", raw)
        if col.type == "int":
            fraction = (typed.notna() & (typed % 1 != 0)).to_numpy()
            faults.add(col.name, "wrong type", fraction, "wrong type '{}' (not an integer)", raw)
            typed = typed.where(~fraction)
        shown = typed.astype("Int64") if col.type == "int" else typed  # "-1 below min 0", not "-1.0 ... 0.0"
        lo = _limit(col.min, col.type)
        hi = _limit(col.max, col.type)
        if col.min is not None:
            faults.add(col.name, "out of range", (typed < col.min).to_numpy(), f"{{}} below min {lo}", shown)
        if col.max is not None:
            faults.add(col.name, "out of range", (typed > col.max).to_numpy(), f"{{}} above max {hi}", shown)
        if col.name == contract.target.name and contract.is_classification and contract.target.classes:
            classes = [float(c) for c in contract.target.classes if isinstance(c, int | float)]
            stray = (typed.notna() & ~typed.isin(classes)).to_numpy()
            faults.add(col.name, "not a class", stray, f"{{}} not in classes {list(contract.target.classes)}", typed)
    elif col.type == "bool":
        typed = _coerce_bool(raw)
        faults.add(col.name, "wrong type", present & typed.isna().to_numpy(), "wrong type '{}'", raw)
    elif col.type == "datetime":
        typed = to_timestamps(raw)
        faults.add(col.name, "wrong type", present & typed.isna().to_numpy(), "wrong type '{}'", raw)
    else:
        typed = raw.astype(object).where(raw.notna(), None)  # type: ignore[call-overload]
        # Non-string values (a number in a text column, say) are kept as their string form.
        if present.any() and pd.api.types.infer_dtype(typed, skipna=True) != "string":
            typed = typed.map(lambda v: v if v is None or isinstance(v, str) else str(v))
        if col.type == "category" and col.categories:
            unknown = present & ~typed.isin(col.categories).to_numpy()
            if not col.allow_unknown:
                faults.add(col.name, "unknown category", unknown, "unknown category '{}'", raw)
    faults.add(
        col.name, "null", ~present if not col.nullable else np.zeros(len(raw), bool), "null in non-nullable column"
    )
    return typed


def _final_dtype(col: Column, typed: pd.Series) -> pd.Series:
    if col.type == "int":
        return typed.astype("Int64" if col.nullable else "int64")
    if col.type == "bool":
        return typed.astype("boolean")
    return typed


def validate_batch(frame: pd.DataFrame, contract: DatasetContract, *, check_schema: bool = True) -> BatchValidation:
    """Split ``frame`` into typed valid rows and quarantined rows with a reason each.

    Raises :class:`SchemaMismatchError` when a contract column is missing; extra columns are
    tolerated, reported in ``extra_columns`` and not carried on.
    """
    missing, extra = check_columns(frame.columns, contract)
    if missing:
        raise SchemaMismatchError(missing, extra)
    # Positions index the fault masks: a default RangeIndex already matches them, no copy needed.
    default_index = isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1
    raw = frame if default_index else frame.reset_index(drop=True)
    faults = _Faults(len(raw))
    typed: dict[str, pd.Series] = {}
    unknown_categories: dict[str, Counter[str]] = {}
    for col in contract.columns:
        typed[col.name] = _check_column(col, raw[col.name], faults, contract)
    # A source that sends the same id twice in one batch: the last row wins (as in preprocessing),
    # the earlier copies are quarantined rather than silently dropped.
    dupes = typed[contract.id_column].duplicated(keep="last").to_numpy() & typed[contract.id_column].notna().to_numpy()
    faults.add(contract.id_column, "duplicate", dupes, "duplicate id (a later row in the batch has the same id)")
    good = ~faults.bad
    for col in contract.columns:
        if col.type == "category" and col.allow_unknown and col.categories:
            values = typed[col.name][good]
            stray = values[values.notna() & ~values.isin(col.categories)]
            if len(stray):
                unknown_categories[col.name] = Counter({str(k): int(v) for k, v in stray.value_counts().items()})

    valid = pd.DataFrame({c.name: _final_dtype(c, typed[c.name][good]) for c in contract.columns}).reset_index(
        drop=True
    )
    bad_rows = raw.loc[faults.bad, contract.column_names]
    quarantined = bad_rows.astype(object).where(bad_rows.notna(), None)  # type: ignore[call-overload]
    for col in contract.columns:
        values = quarantined[col.name]
        if col.type == "int":
            quarantined[col.name] = values.map(_as_text)
        elif len(values) and pd.api.types.infer_dtype(values, skipna=True) != "string":
            quarantined[col.name] = values.map(lambda v: v if v is None or isinstance(v, str) else str(v))
    quarantined[REASON] = faults.reasons().reindex(np.flatnonzero(faults.bad)).to_numpy()
    quarantined = quarantined.reset_index(drop=True)
    if check_schema and len(valid):
        sample = valid if len(valid) <= PANDERA_SAMPLE_ROWS else valid.sample(PANDERA_SAMPLE_ROWS, random_state=0)
        build_schema(contract).validate(sample, lazy=True)
    column_counts = Counter({c: int(rows.sum()) for c, rows in faults.column_rows.items()})
    return BatchValidation(
        valid=valid,
        quarantined=quarantined,
        fault_counts=faults.fault_counts,
        column_counts=column_counts,
        unknown_categories=unknown_categories,
        extra_columns=extra,
    )
