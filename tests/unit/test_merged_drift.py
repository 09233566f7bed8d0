"""Drift from per-partition statistics (monitoring/merged_drift.py) against plain Evidently on the same rows,
on a table that is not the fraud data: numbers with and without NULLs, a number with few distinct values,
a categorical column, odd column names."""

from __future__ import annotations

from functools import partial

import pandas as pd
import pytest

from monitoring.drift import DriftError, compute_drift
from monitoring.merged_drift import ColumnStats, merge_all, merged_drift, partition_stats
from tests.drift_support import CONTRACT, flats


def parts(frame: pd.DataFrame, size: int) -> list[partial[pd.DataFrame]]:
    """Partition readers over slices of `frame` (a real run reads files; see the Dask test)."""
    return [partial(frame.iloc[i : i + size].copy) for i in range(0, len(frame), size)]


@pytest.mark.parametrize("shift", [0.0, 0.08, 0.4])
def test_verdicts_agree_with_plain_evidently_on_all_rows(shift: float) -> None:
    reference, window = flats(30_000, 1), flats(12_000, 2, shift=shift)
    merged = merged_drift(parts(reference, 4_000), parts(window, 2_500), CONTRACT)
    plain = compute_drift(
        reference, window, CONTRACT, reference_sample_rows=len(reference), window_sample_rows=len(window)
    )
    expected = {**plain.columns, **plain.prediction}
    assert set(merged.columns) == set(expected) == {"floor area m²", "rooms", "year built", "district", "prediction"}
    for name, d in merged.columns.items():
        e = expected[name]
        assert (d.test, d.threshold) == (e.test, e.threshold), name  # the test Evidently chose, its threshold
        assert d.drifted == e.drifted, (name, d.score, e.score)
        # counts merge exactly: Jensen-Shannon is Evidently's value; Wasserstein on 1,000-bin histograms
        tolerance = 1e-9 if d.test.startswith("Jensen") else 0.01 + 0.02 * e.score
        assert d.score == pytest.approx(e.score, abs=tolerance), (name, d.score, e.score)
    assert merged.partitions == (8, 5)
    assert (merged.reference_rows, merged.window_rows) == (30_000, 12_000)


def test_merged_statistics_equal_those_of_the_whole() -> None:
    frame = flats(9_000, 3, shift=0.2)
    whole = partition_stats(frame, CONTRACT)
    numerical = {"floor area m²", "rooms", "year built", "prediction"}
    merged = merge_all(
        (partition_stats(frame.iloc[i : i + 1_300], CONTRACT) for i in range(0, 9_000, 1_300)), numerical
    )
    for name, w in whole.items():
        m: ColumnStats = merged[name]
        assert m.n == w.n and m.values == w.values, name
        if name in numerical:
            assert (m.lo, m.hi) == (w.lo, w.hi)
            assert m.mean == pytest.approx(w.mean, rel=1e-12) and m.m2 == pytest.approx(w.m2, rel=1e-9)
    assert whole["rooms"].values is not None, "4 distinct values: kept, tested as categorical"
    assert whole["year built"].values is None, "many distinct values: not kept"
    assert whole["floor area m²"].n == frame["floor area m²"].notna().sum(), "NULLs are not values"


def test_a_small_reference_is_skipped_with_the_reason() -> None:
    merged = merged_drift(parts(flats(800, 1), 400), parts(flats(5_000, 2), 1_000), CONTRACT)
    assert merged.columns == {}
    assert all("<= 1000" in why for why in merged.skipped.values()), merged.skipped


def test_no_partitions_is_a_clear_error() -> None:
    with pytest.raises(DriftError, match="at least one reference and one window partition"):
        merged_drift([], parts(flats(2_000, 2), 1_000), CONTRACT)


def test_a_partition_without_a_contract_column_is_a_clear_error() -> None:
    window = flats(3_000, 2).drop(columns=["district"])
    with pytest.raises(DriftError, match=r"lacks the contract's feature columns \['district'\]"):
        merged_drift(parts(flats(3_000, 1), 1_500), parts(window, 1_500), CONTRACT)


def test_the_flows_result_from_partitions_is_the_local_one() -> None:
    """compute_drift_merged (the monitor flow's path with dask.address) against compute_drift on the same rows:
    the same verdicts, data quality, dataset verdict; the report carries the merged scores."""
    from monitoring.drift import column_verdicts, data_quality, merge_quality
    from monitoring.merged_drift import compute_drift_merged

    reference, window = flats(6_000, 1), flats(4_000, 2, shift=0.4)
    window.loc[window.index[::97], "district"] = "harbour"  # a category the contract does not list
    local = compute_drift(reference, window, CONTRACT, drift_share=0.3)
    merged = compute_drift_merged(reference, parts(window, 900), CONTRACT, partition_rows=2_500, drift_share=0.3)
    assert (merged.drift_share, merged.dataset_drift) == (local.drift_share, local.dataset_drift)
    assert {c: d.drifted for c, d in merged.columns.items()} == {c: d.drifted for c, d in local.columns.items()}
    assert {c: d.test for c, d in merged.prediction.items()} == {c: d.test for c, d in local.prediction.items()}
    assert merged.quality == local.quality == merge_quality([data_quality(window, CONTRACT)])
    assert merged.quality.new_categories == {"district": ["harbour"]}
    reported = column_verdicts(merged.snapshot, ["floor area m²", "rooms", "year built", "prediction"])
    assert {c: (d.score, d.drifted) for c, d in reported.items()} == {
        c: (d.score, d.drifted) for c, d in {**merged.columns, **merged.prediction}.items()
    }
