"""Datasets for the batch-scoring tests: not the fraud one. A binary dataset with an id, a timestamp and
string labels, a multiclass one with neither id nor timestamp (one `all` partition, derived row keys),
and a regression one; each written as a CSV source, collected into raw partitions by the real
collection code, and a model fitted on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from core.contract import ROW_KEY
from core.settings import Settings

CONTRACTS: dict[str, dict[str, Any]] = {
    "binary": {
        "name": "returns",
        "task": "binary",
        "id_column": "Order #",
        "timestamp_column": "Placed at",
        "target": {"name": "returned", "classes": ["no", "yes"], "positive_class": "yes"},
        "columns": [
            {"name": "Order #", "type": "string"},
            {"name": "Placed at", "type": "datetime"},
            {"name": "Body mass (g)", "type": "float", "min": 0, "max": 10000, "nullable": True},
            {"name": "2nd island", "type": "category", "categories": ["Biscoe", "Dream", "Torgersen"]},
            {"name": "returned", "type": "category", "categories": ["no", "yes"]},
        ],
    },
    "multiclass": {
        "name": "cellar",
        "task": "multiclass",
        "target": {"name": "cultivar", "classes": ["a", "b", "c"]},
        "columns": [
            {"name": "Alcohol (%)", "type": "float", "min": 0, "max": 30},
            {"name": "malic/acid", "type": "float", "nullable": True},
            {"name": "cellar", "type": "category", "categories": ["north", "south"], "nullable": True},
            {"name": "cultivar", "type": "category", "categories": ["a", "b", "c"]},
        ],
    },
    "regression": {
        "name": "visits",
        "task": "regression",
        "id_column": "visit",
        "timestamp_column": "visited_on",
        "target": {"name": "progression"},
        "columns": [
            {"name": "visit", "type": "int"},
            {"name": "visited_on", "type": "datetime"},
            {"name": "bmi", "type": "float", "min": 10, "max": 60},
            {"name": "bp", "type": "float", "min": 40, "max": 200, "nullable": True},
            {"name": "progression", "type": "float"},
        ],
    },
}


def frame(task: str, n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    if task == "binary":
        mass = rng.normal(4200, 600, n).round(1)
        island = rng.choice(["Biscoe", "Dream", "Torgersen"], n)
        logit = (mass - 4200) / 400 + (island == "Dream") * 1.2
        return pd.DataFrame(
            {
                "Order #": [f"o{i:06d}" for i in range(n)],
                "Placed at": pd.date_range("2025-03-01", periods=n, freq=f"{max(1, 4 * 86400 // n)}s").strftime(
                    "%Y-%m-%dT%H:%M:%S"
                ),
                "Body mass (g)": np.where(rng.random(n) < 0.05, np.nan, mass),
                "2nd island": island,
                "returned": np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no"),
            }
        )
    if task == "multiclass":
        alcohol = rng.uniform(11, 15, n).round(3)
        return pd.DataFrame(
            {
                "Alcohol (%)": alcohol,
                "malic/acid": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(0.5, 5, n).round(3)),
                "cellar": rng.choice(["north", "south", None], n),
                "cultivar": np.asarray(["a", "b", "c"])[np.digitize(alcohol, [12.3, 13.7])],
            }
        )
    bmi = rng.uniform(18, 40, n).round(2)
    return pd.DataFrame(
        {
            "visit": np.arange(n),
            "visited_on": pd.date_range("2024-01-01", periods=n, freq=f"{max(1, 3 * 86400 // n)}s"),
            "bmi": bmi,
            "bp": np.where(rng.random(n) < 0.05, np.nan, rng.uniform(60, 120, n).round(1)),
            "progression": (bmi * 5 + rng.normal(0, 10, n)).round(2),
        }
    )


@dataclass
class Dataset:
    task: str
    root: Path
    env: dict[str, str]  # the settings environment of this dataset
    frame: pd.DataFrame


def write_dataset(task: str, root: Path, n: int = 1_200) -> Dataset:
    root.mkdir(parents=True, exist_ok=True)
    contract_path = root / "dataset.yaml"
    contract_path.write_text(yaml.safe_dump(CONTRACTS[task], allow_unicode=True))
    data = frame(task, n)
    source = root / "source.csv"
    data.to_csv(source, index=False)
    env = {
        "MLOPS_CONFIG": "configs/settings.yaml",
        "MLOPS_CONTRACT_PATH": str(contract_path),
        "MLOPS_STATE_DIR": str(root / "state"),
        "MLOPS_ENVIRONMENT": "test",
        "MLOPS_SOURCE__KIND": "csv",
        "MLOPS_SOURCE__PATH": str(source),
    }
    return Dataset(task, root, env, data)


def collect(settings: Settings) -> None:
    """The real collection, without Prefect: the source into raw partitions."""
    from core.data import collection

    settings.state.mkdir(parents=True, exist_ok=True)
    plan = collection.plan_window(settings, None)
    result = collection.pull_and_stage(settings, plan)
    collection.finish(settings, plan, result, None)


def fit(settings: Settings, data: pd.DataFrame) -> Any:
    from core.modeling.families import build_pipeline
    from core.modeling.features import to_model_input

    contract = settings.contract
    family = "logistic"  # LogisticRegression, or Ridge for a regression
    X = to_model_input(data.drop(columns=[contract.target.name]), contract)
    return build_pipeline(contract, family, seed=0).fit(X, data[contract.target.name]), family


def raw_frame(settings: Settings) -> pd.DataFrame:
    """Every raw row, partition by partition (as scoring reads them)."""
    from core.data.snapshots import raw_part_files

    return pd.concat([pq.read_table(p).to_pandas() for p in raw_part_files(settings.data_dir / "raw")])


def add_bad_partition(settings: Settings, rows: int = 20) -> Path:
    """A raw partition written under an older, looser contract: some values the current one refuses."""
    from core.data.snapshots import raw_part_files

    first = raw_part_files(settings.data_dir / "raw")[0]
    table = pq.read_table(first).slice(0, rows)
    contract = settings.contract
    numeric = next(c.name for c in contract.features if c.type == "float" and c.max is not None)
    values = table.column(numeric).to_pylist()
    values[0], values[1] = -5.0, 1e9  # below min, above max
    table = table.set_column(table.schema.get_field_index(numeric), numeric, pa.array(values, pa.float64()))
    key = contract.key_column
    if key == ROW_KEY or contract.column(key).type == "string":
        keys = [f"old-{i}" for i in range(rows)]
        table = table.set_column(table.schema.get_field_index(key), key, pa.array(keys, pa.string()))
    else:
        keys = list(range(10_000_000, 10_000_000 + rows))
        table = table.set_column(table.schema.get_field_index(key), key, pa.array(keys, table.schema.field(key).type))
    target = first.parent / "part-olderwriter000000000000.parquet"
    pq.write_table(table, target)
    return target
