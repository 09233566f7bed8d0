"""The dataset matrix: six tables of different shapes, written where a forker's data would be.

From scikit-learn's bundled loaders or generated here: no download. Each entry says how to write the
source and which `mlops contract init` options a person would pass; nothing else about the dataset is
told to the project.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class MatrixDataset:
    name: str
    shape: str  # what this row of the matrix proves
    task: str
    target: str
    id_column: str | None
    timestamp: str | None
    write: Callable[[Path, str | None], tuple[str, list[str]]]  # (folder, postgres db) -> (SOURCE, extra options)
    labels: list[Any] = field(default_factory=list)  # the dataset's own labels (classification)


def _breast_cancer(folder: Path, _db: str | None) -> tuple[str, list[str]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["diagnosis"] = np.where(frame.pop("target") == 0, "malignant", "benign")
    frame.insert(0, "patient", [f"p{i:04d}" for i in range(len(frame))])
    frame.insert(1, "seen_at", pd.date_range("2024-01-01", periods=len(frame), freq="13h").strftime("%Y-%m-%d %H:%M"))
    path = folder / "breast.csv"
    frame.to_csv(path, index=False)
    return str(path), []


def _wine_with_nulls(folder: Path, _db: str | None) -> tuple[str, list[str]]:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    rng = np.random.default_rng(0)
    frame["cultivar"] = frame.pop("target").map({0: "cultivar_a", 1: "cultivar_b", 2: "cultivar_c"})
    frame.loc[rng.random(len(frame)) < 0.1, "malic_acid"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.1, "magnesium"] = np.nan
    frame["cellar"] = rng.choice(["north", "south", "east"], len(frame))
    frame.loc[rng.random(len(frame)) < 0.15, "cellar"] = None
    frame.insert(0, "bottle", [f"b-{i}" for i in range(len(frame))])
    frame = frame.sort_values("cultivar", kind="stable")  # exported sorted by class, as spreadsheets often are
    path = folder / "wine.csv"
    frame.to_csv(path, index=False)
    return str(path), []


def _diabetes_over_days(folder: Path, _db: str | None) -> tuple[str, list[str]]:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame.insert(0, "visit", np.arange(len(frame)))
    frame.insert(1, "visited_on", pd.date_range("2024-01-01", periods=len(frame), freq="D"))  # 442 rows, 442 days
    path = folder / "diabetes.parquet"
    frame.to_parquet(path, index=False)
    return str(path), []


def _digits_in_postgres(folder: Path, db: str | None) -> tuple[str, list[str]]:
    import sqlalchemy as sa
    from sklearn.datasets import load_digits

    from tests.postgres import sqlalchemy_url

    assert db is not None
    frame = load_digits(as_frame=True).frame  # 1,797 rows, 64 pixel columns
    frame["target"] = frame["target"].astype(int)
    engine = sa.create_engine(sqlalchemy_url(db))
    try:
        frame.to_sql("digits", engine, index=False)
    finally:
        engine.dispose()
    return sqlalchemy_url(db).replace("postgresql+psycopg://", "postgresql://"), ["--table", "digits"]


def _iris_bare(folder: Path, _db: str | None) -> tuple[str, list[str]]:
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    frame = data.frame.copy()
    frame["species"] = frame.pop("target").map(dict(enumerate(data.target_names)))
    path = folder / "iris.csv"
    frame.to_csv(path, index=False)
    return str(path), []


AWKWARD = ["Body mass (g)", "flipper/length", "2nd island", "Île-de-France score", "cost €", "a-b c"]


def _awkward_names(folder: Path, _db: str | None) -> tuple[str, list[str]]:
    rng = np.random.default_rng(7)
    n = 1_500
    frame = pd.DataFrame(
        {
            "Order #": [f"o{i:05d}" for i in range(n)],
            "Placed at": pd.date_range("2025-03-01", periods=n, freq="47min").strftime("%Y-%m-%dT%H:%M:%S+01:00"),
            "Body mass (g)": rng.normal(4200, 600, n).round(1),
            "flipper/length": rng.normal(200, 14, n).round(1),
            "2nd island": rng.choice(["Biscoe", "Dream", "Torgersen"], n),
            "Île-de-France score": rng.integers(0, 100, n),
            "cost €": rng.gamma(2.0, 30.0, n).round(2),
            "a-b c": rng.choice(["x", "y"], n),
        }
    )
    logit = (frame["Body mass (g)"] - 4200) / 400 + (frame["2nd island"] == "Dream") * 1.2 - frame["cost €"] / 80
    frame["returned?"] = rng.random(n) < 1 / (1 + np.exp(-logit))  # booleans as labels
    path = folder / "orders.csv"
    frame.to_csv(path, index=False)
    return str(path), []


MATRIX = [
    MatrixDataset(
        "breast",
        "binary, string labels, id and time",
        "binary",
        "diagnosis",
        "patient",
        "seen_at",
        _breast_cancer,
        ["benign", "malignant"],
    ),
    MatrixDataset(
        "wine",
        "multiclass, string labels, nulls in numbers and categories, sorted by class",
        "multiclass",
        "cultivar",
        "bottle",
        None,
        _wine_with_nulls,
        ["cultivar_a", "cultivar_b", "cultivar_c"],
    ),
    MatrixDataset(
        "diabetes",
        "regression over 442 days from Parquet",
        "regression",
        "target",
        "visit",
        "visited_on",
        _diabetes_over_days,
    ),
    MatrixDataset(
        "digits",
        "64 numeric columns from PostgreSQL (--table), 10 classes",
        "multiclass",
        "target",
        None,
        None,
        _digits_in_postgres,
        list(range(10)),
    ),
    MatrixDataset(
        "iris",
        "no id and no timestamp",
        "multiclass",
        "species",
        None,
        None,
        _iris_bare,
        ["setosa", "versicolor", "virginica"],
    ),
    MatrixDataset(
        "orders",
        "awkward column names, UTC offsets, boolean labels",
        "binary",
        "returned?",
        "Order #",
        "Placed at",
        _awkward_names,
        [False, True],
    ),
]
