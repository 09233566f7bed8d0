"""A generated, non-fraud dataset for any task: awkward column names, a nullable number, a category, free
text and a timestamp with derived time features; binary labels whose positive class sorts first."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from core.contract import DatasetContract, parse_contract

TASKS: dict[str, dict[str, Any]] = {
    # The positive class "churned" sorts before "stayed": the model's classes_[1] is the negative one.
    "binary": {"classes": ["churned", "stayed"], "positive_class": "churned"},
    "multiclass": {"classes": ["low", "mid", "high"]},
    "regression": {},
}
TARGET = "outcome (label)"


def contract_dict(task: str) -> dict[str, Any]:
    """The contract as a person writes it in YAML."""
    target_column: dict[str, Any] = {"name": TARGET, "type": "float" if task == "regression" else "string"}
    return {
        "name": f"generated-{task}",
        "task": task,
        "timestamp_column": "Seen at",
        "derived_time_features": ["hour_of_day", "day_of_week"],
        "target": {"name": TARGET, **TASKS[task]},
        "columns": [
            {"name": "Seen at", "type": "datetime"},
            {"name": "Tenure (months)", "type": "float", "nullable": True},
            {"name": "spend/€", "type": "float"},
            {"name": "2nd plan", "type": "category", "categories": ["basic", "plus", "pro"], "nullable": True},
            {"name": "note", "type": "string", "nullable": True},
            target_column,
        ],
    }


def contract_for(task: str) -> DatasetContract:
    return parse_contract(contract_dict(task))


def frame_for(contract: DatasetContract, n: int, seed: int, *, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """`n` rows of the contract's columns and their labels; `shift` moves tenure and spend up (drift)."""
    rng = np.random.default_rng(seed)
    tenure = rng.uniform(0, 60, n) + 30 * shift
    spend = rng.normal(50, 15, n) + 30 * shift
    plan = rng.choice(["basic", "plus", "pro"], n)
    hours = rng.integers(0, 24 * 60, n)
    frame = pd.DataFrame(
        {
            "Seen at": pd.Timestamp("2025-03-01") + pd.to_timedelta(hours, unit="h"),
            "Tenure (months)": np.where(rng.random(n) < 0.1, np.nan, tenure),
            "spend/€": spend,
            "2nd plan": np.where(rng.random(n) < 0.05, None, plan),
            "note": rng.choice(["a", "b"], n),
        }
    )
    signal = -0.08 * tenure + 0.04 * spend + np.where(plan == "pro", 1.5, 0.0) + rng.normal(0, 0.5, n)
    if contract.task == "regression":
        return frame, signal * 10
    if contract.task == "binary":
        return frame, np.where(signal > np.median(signal), "churned", "stayed").astype(object)
    cuts = np.quantile(signal, [1 / 3, 2 / 3])
    return frame, np.asarray(["low", "mid", "high"], dtype=object)[np.digitize(signal, cuts)]
