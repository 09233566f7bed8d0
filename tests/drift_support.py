"""A table that is not the fraud data, for the drift tests: flats for rent, with numbers with and without
NULLs, a number with few distinct values, a categorical column and odd column names."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.contract import DatasetContract

CONTRACT = DatasetContract.model_validate(
    {
        "name": "flats",
        "task": "regression",
        "id_column": "listing",
        "target": {"name": "rent (€)"},
        "columns": [
            {"name": "listing", "type": "string"},
            {"name": "floor area m²", "type": "float", "min": 0, "nullable": True},
            {"name": "rooms", "type": "int", "min": 1, "max": 4},
            {"name": "year built", "type": "int", "min": 1800, "max": 2030},
            {"name": "district", "type": "category", "categories": ["north", "east", "south", "west", "centre"]},
            {"name": "rent (€)", "type": "float"},
        ],
    }
)


def flats(n: int, seed: int, *, shift: float = 0.0) -> pd.DataFrame:
    """`shift` moves the area and the year up and mass onto 'centre' and 4 rooms; 0 is the reference."""
    rng = np.random.default_rng(seed)
    area = rng.gamma(4.0, 18.0, n) * (1 + shift)
    district_p = np.array([0.2, 0.2, 0.2, 0.2, 0.2]) * (1 - shift)
    district_p[-1] += shift
    rooms_p = np.array([0.25, 0.35, 0.25, 0.15]) * (1 - shift)
    rooms_p[-1] += shift
    return pd.DataFrame(
        {
            "listing": [f"l{seed}-{i}" for i in range(n)],
            "floor area m²": np.where(rng.random(n) < 0.03, np.nan, area.round(1)),
            "rooms": rng.choice([1, 2, 3, 4], n, p=rooms_p),
            "year built": (rng.normal(1975 + 25 * shift, 20, n)).clip(1800, 2030).round().astype(int),
            "district": rng.choice(["north", "east", "south", "west", "centre"], n, p=district_p),
            "rent (€)": rng.normal(900, 200, n),
            "prediction": rng.normal(900 + 300 * shift, 150, n),
        }
    )
