"""The feature preprocessor, built from the dataset contract.

It is the first step of every model Pipeline, so training and serving run the very same code:
serving hands the model the raw contract columns and never re-implements a feature.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted, validate_data

if TYPE_CHECKING:  # a type only: this module travels with every model and imports no project code
    from core.contract import DatasetContract

MISSING = "__missing__"


def encode_times(ts: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    """The time features of a (n, k) datetime64 array (NaT = missing): (n, 2 * len(features) * k) floats.

    Per column and feature, the sine and cosine of the feature's angle on its cycle; (0, 0) for NaT.
    The one implementation: TimeFeatures.transform calls it, and so does serving's compiled path, on
    one row at a time, so it computes only the requested parts, with few numpy calls.
    """
    ts = np.asarray(ts)
    n, k = ts.shape
    angles = np.empty((n, len(features) * k), dtype=np.float64)
    for j in range(k):
        col = ts[:, j]
        # Casting floors to the unit, before 1970 too. NaT becomes INT64_MIN: masked below.
        minutes = col.astype("datetime64[m]").view(np.int64)
        for i, name in enumerate(features):
            part: np.ndarray  # float for the hour, whole numbers for the others
            if name == "hour_of_day":  # hour + minute / 60; seconds are ignored
                minute_of_day = minutes % 1440
                part = minute_of_day // 60 + (minute_of_day % 60) / 60.0
            elif name == "day_of_week":  # Monday = 0; 1970-01-01 was a Thursday
                part = (minutes // 1440 + 3) % 7
            else:  # month, January = 0
                part = col.astype("datetime64[M]").view(np.int64) % 12
            angles[:, j * len(features) + i] = 2 * np.pi * part / TimeFeatures._PERIODS[name]
    out = np.empty((n, 2 * angles.shape[1]), dtype=np.float64)
    out[:, 0::2] = np.sin(angles)
    out[:, 1::2] = np.cos(angles)
    out[np.isnat(ts).repeat(2 * len(features), axis=1)] = 0.0  # column j's outputs are consecutive
    return out


class TimeFeatures(TransformerMixin, BaseEstimator):
    """Derive calendar features from timestamp columns.

    Hour and weekday are encoded on the unit circle (sin, cos) so that 23:00 sits next to 00:00.
    A missing or unparseable timestamp maps to the circle's centre (0, 0): "no information".
    """

    _PERIODS: ClassVar[dict[str, int]] = {"hour_of_day": 24, "day_of_week": 7, "month": 12}

    def __init__(self, features: tuple[str, ...] = ("hour_of_day", "day_of_week")) -> None:
        self.features = features

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        return tags

    def fit(self, X: Any, y: Any = None) -> TimeFeatures:
        unknown = [f for f in self.features if f not in self._PERIODS]
        if unknown:
            raise ValueError(f"unknown time features {unknown}; supported: {sorted(self._PERIODS)}")
        validate_data(self, X, dtype=None, ensure_all_finite=False)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        arr = validate_data(self, X, dtype=None, ensure_all_finite=False, reset=False)
        ts = np.empty(arr.shape, dtype="datetime64[ns]")
        for j in range(arr.shape[1]):
            ts[:, j] = _datetimes(arr[:, j])
        return self.vectorised()(ts)

    def vectorised(self) -> Callable[[np.ndarray], np.ndarray]:
        """This transform as a numpy function of a (n, k) datetime64 array, NaT for missing.

        `transform` parses whatever it is given into that array and calls it; the compiled serving
        path (core.modeling.compiled) calls it on the timestamps it already holds.
        """
        check_is_fitted(self)
        return partial(encode_times, features=tuple(self.features))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        names = _check_feature_names_in(self, input_features)
        return np.array([f"{c}_{f}_{trig}" for c in names for f in self.features for trig in ("sin", "cos")])


def _datetimes(values: np.ndarray) -> np.ndarray:
    """Any values pandas reads as timestamps (unparseable: NaT); an aware one keeps its wall-clock time."""
    ts = pd.to_datetime(pd.Series(values), errors="coerce")
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_localize(None)
    return ts.to_numpy(dtype="datetime64[ns]")


def build_preprocessor(contract: DatasetContract, *, scale: bool = True) -> ColumnTransformer:
    """Imputation, scaling, one-hot (categories fixed by the contract, unknowns ignored), time features.

    The id column and anything else not named as a feature is dropped, so an id never reaches a model.
    Free-text (`string`) columns are checked, logged and drift-tested but not modelled: a column the model
    should learn from is declared a `category` with its values.
    """
    numeric = contract.numeric_features
    categorical = [c.name for c in contract.features if c.type == "category"]
    num_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median", add_indicator=True))]
    if scale:
        num_steps.append(("scale", StandardScaler()))
    categories = [[*(contract.column(c).categories or ()), MISSING] for c in categorical]
    transformers: list[tuple[str, Any, list[str]]] = [
        ("num", Pipeline(num_steps), numeric),
        (
            "cat",
            Pipeline(
                [
                    ("impute", SimpleImputer(strategy="constant", fill_value=MISSING)),
                    (
                        "onehot",
                        OneHotEncoder(categories=categories, handle_unknown="ignore", sparse_output=False),
                    ),
                ]
            ),
            categorical,
        ),
    ]
    if contract.time_feature_columns:
        transformers.append(
            ("time", TimeFeatures(tuple(contract.derived_time_features)), contract.time_feature_columns)
        )
    return ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0, verbose_feature_names_out=True)


def to_model_input(frame: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """The frame a model expects: the contract's input columns with their declared dtypes.

    Categoricals are plain object strings (not pandas Categorical) so that an unseen value passes
    through to the one-hot encoder, which ignores it, instead of failing a dtype cast.
    """
    out: dict[str, pd.Series] = {}
    for name in contract.input_columns:
        col = contract.column(name)
        s = frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index)
        if col.type in ("float", "int", "bool"):
            out[name] = pd.to_numeric(s, errors="coerce").astype("float64")
        elif col.type == "datetime":
            out[name] = pd.to_datetime(s, errors="coerce")
        else:
            # NaN, not None: SimpleImputer's default missing marker, so a missing category is imputed.
            out[name] = s.astype("object").where(s.notna(), np.nan)
    return pd.DataFrame(out, index=frame.index)
