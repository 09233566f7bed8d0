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

import numpy as np
import pandas as pd
import pyarrow as pa

from core.contract import DatasetContract
from core.data.rules import ContractChecker, Fault, arrow_schema, to_timestamps, typed_frame

__all__ = ["REASON", "BatchValidation", "SchemaMismatchError", "check_columns", "to_timestamps", "validate_batch"]

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
    result = ContractChecker(contract).check(raw)
    faults = result.faults
    if contract.id_column is not None and len(raw):
        ids = result.typed[contract.id_column].to_pandas()
        dupes = (ids.duplicated(keep="last") & ids.notna()).to_numpy()
        if dupes.any():
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
    valid_table = result.table(schema, good)
    unknown = {
        col: Counter({str(k): int(v) for k, v in _values(result.typed[col], mask & good).value_counts().items()})
        for col, mask in result.unknown.items()
        if (mask & good).any()
    }
    fault_counts: Counter[str] = Counter()
    column_rows: dict[str, np.ndarray] = {}
    for f in faults:
        fault_counts[f"{f.column} {f.kind}"] += f.rows
        column_rows[f.column] = f.mask | column_rows.get(f.column, np.zeros(len(raw), dtype=bool))
    quarantined = _as_text(raw.loc[bad, contract.column_names], contract)
    quarantined[REASON] = result.reasons().reindex(np.flatnonzero(bad)).to_numpy()
    return BatchValidation(
        valid=typed_frame(valid_table, contract),
        quarantined=quarantined.reset_index(drop=True),
        fault_counts=fault_counts,
        column_counts=Counter({c: int(rows.sum()) for c, rows in column_rows.items()}),
        unknown_categories=unknown,
        extra_columns=extra,
        valid_table=valid_table,
    )


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
