"""The simulator: exact contract columns, deterministic by seed, a learnable signal, drift scenarios,
late labels, and a warehouse that is appended to and back-filled like an operational table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from core.contract import DatasetContract, load_contract
from core.settings import PROJECT_ROOT
from demo.simulator import SimulatorError, fraud_probability, iter_simulate, seed_warehouse, simulate, write_warehouse

CONTRACT = load_contract(PROJECT_ROOT / "configs" / "fraud" / "dataset.yaml")


def sim(n_rows: int | None = None, **kwargs: object) -> pd.DataFrame:
    return simulate(n_rows, contract=CONTRACT, **kwargs)  # type: ignore[arg-type]


def test_rows_have_exactly_the_contract_columns_sorted_with_unique_ids() -> None:
    df = sim(days=3, rows_per_day=500)
    assert list(df.columns) == CONTRACT.column_names
    assert len(df) == 1_500
    assert df["event_time"].is_monotonic_increasing
    assert df["transaction_id"].is_unique
    assert df["event_time"].min() >= pd.Timestamp("2026-01-01")
    assert df["event_time"].max() < pd.Timestamp("2026-01-04")


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    a, b = sim(days=2, rows_per_day=400, seed=7), sim(days=2, rows_per_day=400, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = sim(days=2, rows_per_day=400, seed=8)
    assert not a["amount"].equals(c["amount"])


def test_a_day_does_not_depend_on_where_generation_started() -> None:
    whole = sim(days=4, rows_per_day=300, true_labels=True)
    halves = pd.concat(
        [
            sim(days=2, rows_per_day=300, true_labels=True),
            sim(start="2026-01-03", days=2, rows_per_day=300, true_labels=True),
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(whole, halves)


def test_n_rows_is_exact_and_the_iterator_chunks_it() -> None:
    assert len(sim(1_234, days=5)) == 1_234
    chunks = list(iter_simulate(10_000, days=2, chunk_rows=3_000, contract=CONTRACT))
    assert all(len(c) <= 3_000 for c in chunks)
    assert sum(len(c) for c in chunks) == 10_000
    assert pd.concat(chunks)["transaction_id"].is_unique


def test_missing_values_are_present_where_documented() -> None:
    df = sim(days=5, rows_per_day=2_000)
    atm = df["channel"] == "atm"
    assert df.loc[atm, "device"].isna().mean() > 0.2  # device missing for some ATM rows
    assert df.loc[~atm, "device"].isna().sum() == 0
    assert 0.01 < df["customer_tenure_days"].isna().mean() < 0.06
    assert df["distance_from_home_km"].isna().any() and df["amount_sum_24h"].isna().any()
    for col in ("transaction_id", "event_time", "amount", "channel", "country", "txn_count_1h"):
        assert df[col].notna().all(), col


def test_positive_rate_and_a_strong_monotone_velocity_signal() -> None:
    df = sim(200_000, days=20, true_labels=True)
    assert 0.015 < df["is_fraud"].mean() < 0.025
    by_velocity = df.groupby(df["txn_count_1h"].clip(upper=6))["is_fraud"].mean()
    assert by_velocity.is_monotonic_increasing
    assert by_velocity.iloc[-1] > 5 * by_velocity.iloc[0]
    online = df.groupby("channel")["is_fraud"].mean()
    assert online["online"] > online["pos"]
    night = df["event_time"].dt.hour <= 5
    assert df.loc[night, "is_fraud"].mean() > df.loc[~night, "is_fraud"].mean()
    # The oracle: for one fixed transaction, more transactions in the last hour means more risk.
    row = df.iloc[[0]].copy()
    probs = []
    for count in (0, 2, 5, 10, 20):
        row["txn_count_1h"] = count
        probs.append(float(fraud_probability(row)[0]))
    assert probs == sorted(probs) and probs[-1] > 10 * probs[0]


def test_labels_within_the_delay_of_as_of_are_unknown() -> None:
    df = sim(days=10, rows_per_day=200)
    cutoff = pd.Timestamp("2026-01-11") - pd.Timedelta(days=CONTRACT.target.label_delay_days)
    assert df.loc[df["event_time"] > cutoff, "is_fraud"].isna().all()
    assert df.loc[df["event_time"] <= cutoff, "is_fraud"].notna().all()
    assert sim(days=10, rows_per_day=200, as_of="2026-02-01")["is_fraud"].notna().all()


def test_covariate_shift_inflates_amounts_and_brings_a_new_category() -> None:
    base = sim(days=6, rows_per_day=3_000, true_labels=True)
    shifted = sim(days=6, rows_per_day=3_000, scenario="covariate_shift", scenario_start="2026-01-04", true_labels=True)
    before = shifted["event_time"] < pd.Timestamp("2026-01-04")
    pd.testing.assert_frame_equal(shifted[before], base[before])  # nothing changes before the start
    ratio = shifted.loc[~before, "amount"].median() / base.loc[~before, "amount"].median()
    assert 1.6 < ratio < 2.0
    assert "crypto" not in set(shifted.loc[before, "merchant_category"].dropna())
    assert (shifted.loc[~before, "merchant_category"] == "crypto").sum() > 100


def test_concept_drift_moves_fraud_to_small_daytime_pos_purchases() -> None:
    df = sim(days=40, rows_per_day=5_000, scenario="concept_drift", scenario_start="2026-01-21", true_labels=True)
    after = df["event_time"] >= pd.Timestamp("2026-01-21")
    fraud = df["is_fraud"] == 1
    pos_share = lambda m: (df.loc[m & fraud, "channel"] == "pos").mean()  # noqa: E731
    assert pos_share(after) > pos_share(~after) + 0.2
    assert df.loc[after & fraud, "amount"].median() < 0.6 * df.loc[~after & fraud, "amount"].median()
    # Velocity matters less after the change.
    lift = lambda m: df.loc[m & (df["txn_count_1h"] >= 4), "is_fraud"].mean() / df.loc[m, "is_fraud"].mean()  # noqa: E731
    assert lift(after) < lift(~after) / 2
    assert 0.012 < df.loc[after, "is_fraud"].mean() < 0.03


def test_data_quality_injects_nulls_out_of_range_values_and_wrong_types() -> None:
    df = sim(days=4, rows_per_day=5_000, scenario="data_quality", scenario_start="2026-01-03")
    after = (df["event_time"] >= pd.Timestamp("2026-01-03")).to_numpy()
    assert df.loc[~after, "channel"].notna().all()
    assert df.loc[after, "channel"].isna().mean() > 0.02
    assert df.loc[after, "txn_count_1h"].isna().any()
    amount = df["amount"]
    assert (amount[after] == "N/A").sum() > 50 and (amount[~after] == "N/A").sum() == 0
    numeric = pd.to_numeric(amount, errors="coerce")
    assert (numeric[after] > 100_000).any() and (df.loc[after, "txn_count_24h"] < 0).any()
    typed = sim(days=4, rows_per_day=5_000, scenario="data_quality", scenario_start="2026-01-03", wrong_types=False)
    assert pd.api.types.is_float_dtype(typed["amount"])


def test_unknown_scenarios_and_foreign_contracts_are_refused() -> None:
    with pytest.raises(SimulatorError, match="unknown scenario"):
        sim(days=1, scenario="meteor")
    raw = CONTRACT.model_dump()
    raw["columns"] = [*raw["columns"], {"name": "loyalty_points", "type": "int"}]
    with pytest.raises(SimulatorError, match="loyalty_points"):
        simulate(days=1, contract=DatasetContract.model_validate(raw))


def _labels(url: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        return pd.read_sql("SELECT transaction_id, event_time, is_fraud FROM transactions", engine)
    finally:
        engine.dispose()


def test_the_warehouse_is_appended_to_and_labels_are_back_filled(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wh.db'}"
    first = write_warehouse(url, days=5, rows_per_day=300, contract=CONTRACT)
    assert first.rows_written == 1_500 and first.labels_backfilled == 0
    rows = _labels(url)
    pending = rows["is_fraud"].isna()
    assert pending.sum() == 900  # the last 3 of 5 days wait for their chargebacks
    # The next append starts the day after the newest row and settles every label that has matured.
    second = write_warehouse(url, days=5, rows_per_day=300, contract=CONTRACT)
    assert second.start.startswith("2026-01-06")
    assert second.labels_backfilled == 900
    rows = _labels(url)
    assert len(rows) == 3_000 and rows["transaction_id"].is_unique
    assert rows["is_fraud"].isna().sum() == 900
    truth = sim(days=10, rows_per_day=300, true_labels=True).set_index("transaction_id")["is_fraud"]
    settled = rows.dropna(subset=["is_fraud"]).set_index("transaction_id")["is_fraud"].astype(int)
    assert (settled == truth.loc[settled.index].astype(int)).all()


def test_seed_warehouse_fills_only_an_empty_table(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import get_settings

    monkeypatch.setenv("MLOPS_SIMULATOR__DAYS", "2")
    monkeypatch.setenv("MLOPS_SIMULATOR__ROWS_PER_DAY", "100")
    settings = get_settings()
    state_dir.mkdir(parents=True, exist_ok=True)
    written = seed_warehouse(settings)
    assert written is not None and written.rows_written == 200
    assert seed_warehouse(settings) is None
    assert len(_labels(settings.warehouse_url)) == 200
    assert np.isclose(_labels(settings.warehouse_url)["is_fraud"].isna().mean(), 1.0)  # 2 days < 3-day delay
