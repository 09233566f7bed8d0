"""Synthetic rows that respect the dataset contract.

The service uses them to warm a freshly loaded model and to check a compiled (ONNX) model against
scikit-learn before it serves; tests and the benchmark use them as requests. They cover the corners
a real sample may miss: nulls where allowed, the range ends, and unknown categories where allowed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.contract import Column, DatasetContract

UNKNOWN_CATEGORY = "__unseen_category__"


def synthetic_frame(contract: DatasetContract, n_rows: int, seed: int = 0, *, edge_cases: bool = True) -> pd.DataFrame:
    """`n_rows` rows with the contract's input columns (no target), valid against the contract."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {c.name: _column(c, n_rows, rng, edge_cases) for c in contract.columns if c.name in contract.input_columns}
    )


def _column(col: Column, n: int, rng: np.random.Generator, edge_cases: bool) -> pd.Series:
    values: pd.Series
    if col.type in ("float", "int"):
        lo = col.min if col.min is not None else 0.0
        hi = col.max if col.max is not None else lo + 1000.0
        # Log-uniform within the range: most real amounts and counts are small, a few are large.
        raw = lo + np.expm1(rng.uniform(0, np.log1p(hi - lo), n))
        raw = np.clip(raw, lo, hi)
        if col.type == "int":
            raw = np.floor(raw)
        if edge_cases and n >= 4:
            raw[0], raw[1] = lo, hi
        values = pd.Series(raw.astype(np.float64))
    elif col.type == "bool":
        values = pd.Series(rng.integers(0, 2, n).astype(np.float64))
    elif col.type == "category":
        cats = list(col.categories or ())
        picked = np.asarray(cats, dtype=object)[rng.integers(0, len(cats), n)]
        if edge_cases and col.allow_unknown and n >= 8:
            picked[3] = UNKNOWN_CATEGORY
        values = pd.Series(picked, dtype=object)
    elif col.type == "datetime":
        start = np.datetime64("2026-01-01T00:00:00")
        offsets = rng.integers(0, 90 * 24 * 3600, n).astype("timedelta64[s]")
        values = pd.Series((start + offsets).astype("datetime64[ns]"))
    else:  # string
        values = pd.Series([f"synthetic-{i:09d}" for i in range(n)], dtype=object)
    if col.nullable and col.type != "datetime":
        mask = rng.random(n) < 0.05
        if edge_cases and n >= 8:
            mask[2] = True
        values = values.mask(mask, None) if values.dtype == object else values.mask(mask)
    return values
