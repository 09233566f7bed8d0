"""The feature preprocessor, built from the dataset contract.

It is the first step of every model Pipeline, so training and serving run the very same code:
serving hands the model the raw contract columns and never re-implements a feature.
"""

from __future__ import annotations

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
        blocks = [self._encode(pd.Series(arr[:, j])) for j in range(arr.shape[1])]
        return np.hstack(blocks) if blocks else np.empty((arr.shape[0], 0))

    def _encode(self, col: pd.Series) -> np.ndarray:
        ts = pd.to_datetime(col, errors="coerce")
        parts: dict[str, pd.Series] = {
            "hour_of_day": ts.dt.hour + ts.dt.minute / 60.0,
            "day_of_week": ts.dt.dayofweek,
            "month": ts.dt.month - 1,
        }
        out = np.empty((len(ts), 2 * len(self.features)), dtype=np.float64)
        for i, name in enumerate(self.features):
            angle = 2 * np.pi * parts[name].to_numpy(dtype=np.float64, na_value=np.nan) / self._PERIODS[name]
            out[:, 2 * i] = np.nan_to_num(np.sin(angle))
            out[:, 2 * i + 1] = np.nan_to_num(np.cos(angle))
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        names = _check_feature_names_in(self, input_features)
        return np.array([f"{c}_{f}_{trig}" for c in names for f in self.features for trig in ("sin", "cos")])


def build_preprocessor(contract: DatasetContract, *, scale: bool = True) -> ColumnTransformer:
    """Imputation, scaling, one-hot (categories fixed by the contract, unknowns ignored), time features.

    The id column and anything else not named as a feature is dropped, so an id never reaches a model.
    """
    numeric = contract.numeric_features
    categorical = contract.categorical_features
    num_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median", add_indicator=True))]
    if scale:
        num_steps.append(("scale", StandardScaler()))
    categories = [
        [*(contract.column(c).categories or ()), MISSING] if contract.column(c).type == "category" else "auto"
        for c in categorical
    ]
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
