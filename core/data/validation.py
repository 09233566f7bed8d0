"""Collection's use of the contract's checker: a raw batch split into typed valid rows and quarantined rows.

``validate_batch`` runs the compiled checker (core.data.rules) and returns the valid rows typed as the
contract says, and the quarantined rows with their original values as text and one human-readable reason
each (e.g. ``"amount: 250000.0 above max 100000.0; channel: null in non-nullable column"``), with counts
per fault for the run's manifest. A source that sends the same id twice in one batch keeps the last row;
the earlier copies are quarantined rather than silently dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from core.contract import DatasetContract
from core.data.rules import ContractChecker, Fault, arrow_schema, distinct_count, to_timestamps, typed_frame

__all__ = [
    "REASON",
    "BatchValidation",
    "SchemaMismatchError",
    "TableValidation",
    "check_columns",
    "to_timestamps",
    "validate_batch",
    "validate_table",
]

REASON = "_reason"


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
    valid_table: pa.Table | None = None  # the valid rows as Arrow, typed by the contract's schema

    @property
    def rows(self) -> int:
        return len(self.valid) + len(self.quarantined)


def check_columns(columns: Iterable[str], contract: DatasetContract) -> tuple[list[str], list[str]]:
    """(missing contract columns, extra columns the contract does not name)."""
    present = list(columns)
    missing = [c for c in contract.column_names if c not in present]
    extra = [c for c in present if c not in contract.column_names]
    return missing, extra


def validate_batch(frame: pd.DataFrame, contract: DatasetContract) -> BatchValidation:
    """Split ``frame`` into typed valid rows and quarantined rows with a reason each.

    Raises :class:`SchemaMismatchError` when a contract column is missing; extra columns are
    tolerated, reported in ``extra_columns`` and not carried on.
    """
    missing, extra = check_columns(frame.columns, contract)
    if missing:
        raise SchemaMismatchError(missing, extra)
    default_index = isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1
    raw = frame if default_index else frame.reset_index(drop=True)
    checked = _check(raw, contract, extra, lambda bad: raw.loc[bad, contract.column_names])
    return BatchValidation(
        valid=typed_frame(checked.valid, contract),
        quarantined=checked.quarantined,
        fault_counts=checked.fault_counts,
        column_counts=checked.column_counts,
        unknown_categories=checked.unknown_categories,
        extra_columns=extra,
        valid_table=checked.valid,
    )


@dataclass
class TableValidation:
    """One Arrow batch split into typed valid rows (Arrow) and quarantined rows (text + reason)."""

    valid: pa.Table
    quarantined: pd.DataFrame
    fault_counts: Counter[str] = field(default_factory=Counter)
    column_counts: Counter[str] = field(default_factory=Counter)
    unknown_categories: dict[str, Counter[str]] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)
    timestamps: np.ndarray | None = None  # every row's time as the checker read it (NaT where none)

    @property
    def rows(self) -> int:
        return self.valid.num_rows + len(self.quarantined)


def validate_table(table: pa.Table, contract: DatasetContract) -> TableValidation:
    """:func:`validate_batch` on Arrow, with no pandas round trip for the valid rows (collection's path)."""
    missing, extra = check_columns(table.column_names, contract)
    if missing:
        raise SchemaMismatchError(missing, extra)
    columns = contract.column_names
    return _check(table, contract, extra, lambda bad: table.filter(pa.array(bad)).select(columns).to_pandas())


def _check(
    data: pa.Table | pd.DataFrame, contract: DatasetContract, extra: list[str], bad_rows: Any
) -> TableValidation:
    """The checker's verdict on every row; ``bad_rows(mask)`` gives the raw values of the rows to quarantine."""
    n = data.num_rows if isinstance(data, pa.Table) else len(data)
    result = ContractChecker(contract).check(data)
    faults = result.faults
    if contract.id_column is not None and n:
        dupes = _duplicates(result.typed[contract.id_column])
        if dupes is not None:
            faults.append(
                Fault(
                    contract.id_column,
                    "duplicate",
                    dupes,
                    "duplicate id",
                    "duplicate id (a later row in the batch has the same id)",
                )
            )
    bad = result.bad
    good = ~bad
    schema = arrow_schema(contract, contract.column_names)
    any_bad = bool(bad.any())
    valid_table = result.table(schema, good if any_bad else None)
    unknown = {
        col: Counter({str(k): int(v) for k, v in _values(result.typed[col], mask & good).value_counts().items()})
        for col, mask in result.unknown.items()
        if (mask & good).any()
    }
    fault_counts: Counter[str] = Counter()
    column_rows: dict[str, np.ndarray] = {}
    for f in faults:
        fault_counts[f"{f.column} {f.kind}"] += f.rows
        column_rows[f.column] = f.mask | column_rows.get(f.column, np.zeros(n, dtype=bool))
    if any_bad:
        quarantined = _as_text(bad_rows(bad), contract)
        quarantined[REASON] = result.reasons().reindex(np.flatnonzero(bad)).to_numpy()
        quarantined = quarantined.reset_index(drop=True)
    else:
        quarantined = pd.DataFrame({**{c: pd.Series(dtype=object) for c in contract.column_names}, REASON: []})
    ts_col = contract.timestamp_column
    stamps = None
    if ts_col is not None and ts_col in result.typed:
        stamps = np.asarray(result.typed[ts_col].view(pa.int64()).fill_null(np.iinfo(np.int64).min).to_numpy())
        stamps = stamps.view("datetime64[ns]")
    return TableValidation(
        valid=valid_table,
        quarantined=quarantined,
        fault_counts=fault_counts,
        column_counts=Counter({c: int(rows.sum()) for c, rows in column_rows.items()}),
        unknown_categories=unknown,
        extra_columns=extra,
        timestamps=stamps,
    )


def _duplicates(ids: pa.Array) -> np.ndarray | None:
    """Rows whose id a later row repeats (None when every id is distinct, the usual case: one Arrow kernel)."""
    present = len(ids) - ids.null_count
    if distinct_count(ids, count_null=False) == present:
        return None
    series = ids.to_pandas()
    dupes = (series.duplicated(keep="last") & series.notna()).to_numpy()
    return dupes if dupes.any() else None


def _values(array: pa.Array, mask: np.ndarray) -> pd.Series:
    return pd.Series(array.filter(pa.array(mask)).to_pylist(), dtype=object)


def _as_text(rows: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """Quarantined values kept as text (None stays None); in an int column an integral float (the column
    read with NULLs) loses its '.0'."""
    out = rows.astype(object).where(rows.notna(), None)  # type: ignore[call-overload]
    for name in out.columns:
        integral = contract.column(name).type == "int"
        out[name] = out[name].map(lambda v, integral=integral: _text(v, integral))
    return out


def _text(value: object, integral: bool) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if integral and isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)
