"""The contract-derived preprocessor: what serving and training share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from core.modeling.features import MISSING, TimeFeatures, build_preprocessor, to_model_input
from core.settings import get_settings


def _rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "d"],
            "event_time": ["2026-01-01T23:30", "2026-01-02T00:30", "2026-01-03T12:00", None],
            "amount": [10.0, 2000.0, None, 5.0],
            "merchant_category": ["grocery", "electronics", None, "crypto"],
            "channel": ["pos", "online", "atm", "pos"],
            "country": ["DE", "FR", "US", "XX"],
            "device": ["terminal", "mobile", None, "desktop"],
            "customer_tenure_days": [100, None, 3000, 5],
            "txn_count_1h": [0, 7, 1, 0],
            "txn_count_24h": [1, 20, 3, 2],
            "amount_sum_24h": [10.0, 9000.0, 50.0, None],
            "distance_from_home_km": [1.0, 800.0, None, 3.0],
        }
    )


def test_preprocessor_handles_missing_and_unknown_values() -> None:
    contract = get_settings().contract
    X = to_model_input(_rows(), contract)
    pre = build_preprocessor(contract).fit(X)
    out = pre.transform(X)
    names = list(pre.get_feature_names_out())
    assert out.shape == (4, len(names))
    assert np.isfinite(out).all()
    # An unknown category ('crypto', 'XX') becomes all zeros in its one-hot block, not an error.
    mc = [i for i, n in enumerate(names) if n.startswith("cat__merchant_category_")]
    assert out[3, mc].sum() == 0
    assert out[2, names.index(f"cat__merchant_category_{MISSING}")] == 1
    # The id never reaches the model.
    assert not any("transaction_id" in n for n in names)


def test_id_column_does_not_change_output() -> None:
    contract = get_settings().contract
    X = to_model_input(_rows(), contract)
    pre = build_preprocessor(contract).fit(X)
    other = X.assign(transaction_id=["z1", "z2", "z3", "z4"])
    np.testing.assert_array_equal(pre.transform(X), pre.transform(other))


def test_time_features_are_cyclical() -> None:
    tf = TimeFeatures(("hour_of_day",)).fit(pd.DataFrame({"t": ["2026-01-01"]}))
    out = tf.transform(pd.DataFrame({"t": ["2026-01-01T23:59", "2026-01-02T00:01", "2026-01-02T12:00"]}))
    assert list(tf.get_feature_names_out()) == ["t_hour_of_day_sin", "t_hour_of_day_cos"]
    assert np.linalg.norm(out[0] - out[1]) < 0.01  # just before and after midnight are neighbours
    assert np.linalg.norm(out[0] - out[2]) > 1.9  # noon is on the other side of the circle


def test_time_features_values_and_missing_timestamps() -> None:
    """Checked against pandas' own calendar fields; a missing or unparseable timestamp is (0, 0)."""
    t = pd.Series(["2026-01-01T23:59:30", "1969-07-20T20:17:00", "2028-02-29T00:00:59", None, "not a time"])
    out = TimeFeatures(("hour_of_day", "day_of_week", "month")).fit(t.to_frame()).transform(t.to_frame())
    ts = pd.to_datetime(t, errors="coerce")
    parts = [(ts.dt.hour + ts.dt.minute / 60, 24), (ts.dt.dayofweek, 7), (ts.dt.month - 1, 12)]
    expected = np.column_stack([f(2 * np.pi * p.to_numpy(dtype=float) / n) for p, n in parts for f in (np.sin, np.cos)])
    np.testing.assert_allclose(out[:3], expected[:3], rtol=0, atol=1e-12)
    assert (out[3:] == 0).all()


def test_unknown_time_feature_is_refused() -> None:
    with pytest.raises(ValueError, match="minute_of_hour"):
        TimeFeatures(("minute_of_hour",)).fit(pd.DataFrame({"t": ["2026-01-01"]}))


def test_to_model_input_coerces_declared_types() -> None:
    contract = get_settings().contract
    X = to_model_input(_rows().assign(amount=["1.5", "x", None, 3]), contract)
    assert X["amount"].dtype == np.float64
    assert X["amount"].isna().tolist() == [False, True, True, False]
    assert list(X.columns) == contract.input_columns


@parametrize_with_checks([TimeFeatures()])
def test_time_features_sklearn_conventions(estimator: object, check: object) -> None:
    # The generic checks feed random floats, which TimeFeatures reads as epoch nanoseconds: the
    # point is the API contract (fit returns self, n_features_in_, errors on bad shapes), not values.
    check(estimator)  # type: ignore[operator]
