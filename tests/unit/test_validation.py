"""Validation derived from the contract: typed valid rows, quarantined rows with one reason each."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from core.contract import load_contract
from core.data.rules import arrow_schema, distinct_count
from core.data.validation import REASON, SchemaMismatchError, validate_batch
from core.settings import PROJECT_ROOT
from demo.simulator import simulate

CONTRACT = load_contract(PROJECT_ROOT / "configs" / "fraud" / "dataset.yaml")


@pytest.fixture
def batch() -> pd.DataFrame:
    return simulate(days=1, rows_per_day=200, as_of="2026-02-01", contract=CONTRACT)


def reasons(result_frame: pd.DataFrame) -> list[str]:
    return list(result_frame[REASON])


def test_a_clean_batch_is_all_valid_and_typed_as_the_contract_says(batch: pd.DataFrame) -> None:
    result = validate_batch(batch, CONTRACT)
    assert len(result.valid) == 200 and result.quarantined.empty
    assert result.valid["customer_tenure_days"].dtype == "Int64"
    assert result.valid["is_fraud"].dtype == "int64"
    assert result.valid["event_time"].dtype == "datetime64[ns]"
    assert result.valid_table is not None
    assert result.valid_table.schema == arrow_schema(CONTRACT, CONTRACT.column_names)  # typed as declared


def test_text_values_from_a_csv_are_typed(batch: pd.DataFrame) -> None:
    as_text = batch.astype(object).where(batch.notna(), None).map(lambda v: None if v is None else str(v))
    result = validate_batch(as_text, CONTRACT)
    assert len(result.valid) == 200, result.quarantined[REASON].head().tolist()
    pd.testing.assert_series_equal(result.valid["amount"], batch["amount"].astype(float), check_names=False)
    assert (result.valid["event_time"] == batch["event_time"]).all()


def test_each_fault_quarantines_its_row_with_a_readable_reason(batch: pd.DataFrame) -> None:
    bad = batch.astype({"amount": object, "customer_tenure_days": object})
    bad.loc[0, "amount"] = "N/A"
    bad.loc[1, "amount"] = 250_000.0
    bad.loc[2, "channel"] = None
    bad.loc[3, "channel"] = "teleport"
    bad.loc[4, "txn_count_24h"] = -1
    bad.loc[5, "customer_tenure_days"] = 2.5
    bad.loc[6, "is_fraud"] = 3
    bad.loc[7, ["amount", "channel"]] = [-5.0, None]
    result = validate_batch(bad, CONTRACT)
    assert len(result.valid) + len(result.quarantined) == len(bad)
    by_id = dict(zip(result.quarantined["transaction_id"], result.quarantined[REASON], strict=True))
    ids = batch["transaction_id"]
    assert by_id[ids[0]] == "amount: wrong type 'N/A'"
    assert by_id[ids[1]] == "amount: 250000.0 above max 100000.0"
    assert by_id[ids[2]] == "channel: null in non-nullable column"
    assert by_id[ids[3]] == "channel: unknown category 'teleport'"
    assert by_id[ids[4]] == "txn_count_24h: -1 below min 0"
    assert by_id[ids[5]] == "customer_tenure_days: wrong type '2.5' (not an integer)"
    assert by_id[ids[6]].startswith("is_fraud: 3 above max 1")
    assert by_id[ids[7]] == "amount: -5.0 below min 0.0; channel: null in non-nullable column"
    assert len(by_id) == 8
    # Quarantined values are kept as text, the wrong one included.
    row0 = result.quarantined.set_index("transaction_id").loc[ids[0]]
    assert row0["amount"] == "N/A"
    assert result.fault_counts["amount wrong type"] == 1
    assert result.fault_counts["amount out of range"] == 2
    assert result.fault_counts["channel null"] == 2
    assert result.column_counts["amount"] == 3 and result.column_counts["channel"] == 3


def test_an_unknown_category_is_accepted_and_flagged_where_the_contract_allows_it(batch: pd.DataFrame) -> None:
    batch.loc[:9, "merchant_category"] = "crypto"
    result = validate_batch(batch, CONTRACT)
    assert result.quarantined.empty
    assert result.unknown_categories == {"merchant_category": {"crypto": 10}}


def test_nulls_in_nullable_columns_are_fine(batch: pd.DataFrame) -> None:
    batch["device"] = None
    batch["customer_tenure_days"] = pd.array([pd.NA] * len(batch), dtype="Int64")
    result = validate_batch(batch, CONTRACT)
    assert result.quarantined.empty and result.valid["device"].isna().all()


def test_an_empty_batch_is_valid_and_empty(batch: pd.DataFrame) -> None:
    result = validate_batch(batch.iloc[0:0], CONTRACT)
    assert result.valid.empty and result.quarantined.empty and result.rows == 0
    assert list(result.valid.columns) == CONTRACT.column_names


def test_a_missing_column_is_a_schema_error_an_extra_one_is_reported(batch: pd.DataFrame) -> None:
    with pytest.raises(SchemaMismatchError) as err:
        validate_batch(batch.drop(columns=["channel", "amount"]).assign(colour="red"), CONTRACT)
    assert err.value.missing == ["amount", "channel"] and err.value.extra == ["colour"]
    assert "['amount', 'channel']" in str(err.value)
    result = validate_batch(batch.assign(colour="red"), CONTRACT)
    assert result.extra_columns == ["colour"] and "colour" not in result.valid.columns


def test_a_repeated_id_keeps_the_last_row_and_quarantines_the_earlier(batch: pd.DataFrame) -> None:
    dup = pd.concat([batch.iloc[[0]].assign(amount=1.0), batch], ignore_index=True)
    result = validate_batch(dup, CONTRACT)
    assert len(result.quarantined) == 1
    assert result.quarantined.loc[0, "amount"] == "1.0"
    assert "duplicate id" in result.quarantined.loc[0, REASON]
    assert result.valid["transaction_id"].is_unique


def test_a_whole_data_quality_batch_accounts_for_every_row() -> None:
    df = simulate(days=2, rows_per_day=5_000, scenario="data_quality", as_of="2026-02-01", contract=CONTRACT)
    result = validate_batch(df, CONTRACT)
    assert len(result.valid) + len(result.quarantined) == len(df)
    share = len(result.quarantined) / len(df)
    assert 0.06 < share < 0.12
    assert set(result.fault_counts) == {
        "channel null",
        "txn_count_1h null",
        "amount out of range",
        "txn_count_24h out of range",
        "amount wrong type",
    }
    assert sum(result.column_counts.values()) >= len(result.quarantined)
    assert not np.isin(result.valid["transaction_id"], result.quarantined["transaction_id"]).any()


@pytest.mark.parametrize(
    "values",
    [
        pa.array(["a", "b", "c"]),
        pa.array(["a", None, "a", None, "b"]),
        pa.array([None, None], type=pa.string()),
        pa.array([3, 1, 3, None]),
        pa.chunked_array([pa.array(["x", None]), pa.array(["x", "y"])]),
        pa.array([], type=pa.string()),
    ],
)
def test_distinct_count_is_arrows_count_distinct(values: pa.Array | pa.ChunkedArray) -> None:
    """The key checks count distinct keys with Arrow's `unique` kernel: the same counts as its
    `count_distinct` aggregate, NULL counted as one value or not at all."""
    assert distinct_count(values, count_null=True) == pc.count_distinct(values, mode="all").as_py()
    assert distinct_count(values, count_null=False) == pc.count_distinct(values, mode="only_valid").as_py()


def test_text_with_bytes_under_a_null_is_checked_to_the_same_rows_as_without() -> None:
    """ADBC's SQLite driver can leave a byte under a NULL that opens a batch: the checked rows, and so the part
    file's fingerprint, must not depend on where a read started (a non-fraud contract)."""
    from core.data.snapshots import fingerprint
    from core.data.validation import validate_table
    from tests.generated import TARGET, contract_for

    contract = contract_for("regression")
    offsets = pa.py_buffer(np.array([0, 1, 5, 10], dtype=np.int32).tobytes())
    validity = pa.py_buffer(bytes([0b110]))
    with_byte = pa.Array.from_buffers(pa.string(), 3, [validity, offsets, pa.py_buffer(b"xplusbasic")], null_count=1)
    clean = pa.array([None, "plus", "basic"], pa.string())
    assert with_byte.equals(clean)

    def checked(plan: pa.Array) -> pa.Table:
        rows = pa.table(
            {
                "Seen at": pa.array(["2026-01-01T10:00:00"] * 3),
                "Tenure (months)": [1.0, 2.0, 3.0],
                "spend/€": [10.0, 20.0, 30.0],
                "2nd plan": plan,
                "note": plan,
                TARGET: [1.0, 2.0, 3.0],
            }
        )
        result = validate_table(rows, contract)
        assert result.valid.num_rows == 3
        return result.valid

    assert fingerprint(checked(with_byte)) == fingerprint(checked(clean))
