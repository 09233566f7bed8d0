"""The fitted preprocessor as plain numpy functions: the fast form of core.modeling.features.

Calling a fitted ColumnTransformer on a few rows costs milliseconds, almost all of it pandas and
input validation, not arithmetic. `CompiledFeatures.from_pipeline` reads the fitted parameters once
(imputer statistics, scaler moments, one-hot categories) and returns numpy functions of the column
arrays a service already holds. Nothing here re-implements a feature:

* a transformer of the project's own hands over its own numpy form: a `vectorised()` method returning
  a function of the (n, k) input block, which its `transform` calls too (TimeFeatures does this), so
  the feature is written once;
* scikit-learn's own steps (SimpleImputer, StandardScaler, OneHotEncoder, and a Pipeline of them) get
  their numpy form here, from their fitted attributes;
* any other step raises NotCompilableError naming it: the caller serves the Pipeline itself and says
  why, rather than falling to the slow path silently.

A block reaches its function as a 2-D array of the step's input columns: float64 (NaN = missing) for
numbers, datetime64 (NaT) for timestamps, object (None) for text. Whoever uses this checks the result
against the Pipeline before trusting it (serving does, on synthetic contract rows).

Not shipped inside a logged model (core.registry.artefact ships core.modeling.features, which the
Pipeline references): the compiled form is rebuilt from the fitted objects wherever a model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

if TYPE_CHECKING:
    from core.contract import DatasetContract

# Per-column arrays: float64 (NaN = null) for numbers, object (None = null) for categories and strings,
# datetime64[s] (NaT = null) for timestamps.
Columns = dict[str, np.ndarray]
Step = Callable[[np.ndarray], np.ndarray]
BlockKind = str  # "numeric", "datetime" or "object": how a block's columns are stacked


class NotCompilableError(Exception):
    """A fitted step has no numpy form here; the message names it and says how to give it one."""


def compile_step(step: Any) -> Step:
    """The numpy form of one fitted step of a ColumnTransformer (a transformer or a Pipeline of them)."""
    own = getattr(step, "vectorised", None)
    if callable(own):  # the project's own transformers: their form, the one their transform uses
        fn: Step = own()
        return fn
    if isinstance(step, Pipeline):
        parts = [s for _, s in step.steps if s not in (None, "passthrough")]
        if len(parts) == 2 and _is_text_imputer(parts[0]) and isinstance(parts[1], OneHotEncoder):
            return _compile_onehot(parts[1], fill=list(parts[0].statistics_))
        steps = [compile_step(s) for s in parts]

        def chain(x: np.ndarray) -> np.ndarray:
            for s in steps:
                x = s(x)
            return x

        return chain
    if isinstance(step, str) and step == "passthrough":
        return lambda x: np.asarray(x, dtype=np.float64)
    if isinstance(step, SimpleImputer):
        return _compile_imputer(step)
    if isinstance(step, StandardScaler):
        return _compile_scaler(step)
    if isinstance(step, OneHotEncoder):
        return _compile_onehot(step)
    raise NotCompilableError(
        f"no numpy form for {type(step).__name__}: give it a vectorised() method (see core/modeling/compiled.py)"
    )


def _compile_scaler(scaler: StandardScaler) -> Step:
    mean = scaler.mean_ if scaler.with_mean else None
    scale = scaler.scale_ if scaler.with_std else None

    def scale_(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if mean is not None:
            x = x - mean
        if scale is not None:
            x = x / scale
        return x

    return scale_


def _compile_imputer(imp: SimpleImputer) -> Step:
    stats = np.asarray(imp.statistics_)
    if imp.keep_empty_features is False and stats.dtype.kind == "f" and np.isnan(stats).any():
        raise NotCompilableError("SimpleImputer dropped an all-empty column")
    indicator = imp.indicator_.features_ if imp.add_indicator else None
    if indicator is not None and imp.indicator_.features != "missing-only":
        raise NotCompilableError("MissingIndicator(features='all')")
    numeric = stats.dtype.kind in "fiu"

    def impute(x: np.ndarray) -> np.ndarray:
        if numeric:
            x = np.asarray(x, dtype=np.float64)
            missing = np.isnan(x)
        else:
            missing = pd.isna(x)
        out = np.where(missing, stats[None, :], x)
        if indicator is not None:
            out = np.concatenate([out, missing[:, indicator].astype(out.dtype)], axis=1)
        return out

    return impute


def _is_text_imputer(step: Any) -> bool:
    return isinstance(step, SimpleImputer) and not step.add_indicator and np.asarray(step.statistics_).dtype == object


_FEW_ROWS = 64


def _compile_onehot(enc: OneHotEncoder, fill: list[Any] | None = None) -> Step:
    """One-hot by hash lookup, not by comparing every value with every category.

    With `fill` (a text SimpleImputer's per-column statistics in front of the encoder), a missing
    value (None or NaN) is looked up as its column's fill value, so the imputer costs no pass of its own.
    """
    if enc.drop_idx_ is not None or getattr(enc, "_infrequent_enabled", False):
        raise NotCompilableError("OneHotEncoder with drop or infrequent categories")
    if enc.handle_unknown not in ("ignore", "infrequent_if_exist"):
        raise NotCompilableError(f"OneHotEncoder(handle_unknown={enc.handle_unknown!r})")
    indexes = []
    lookups: list[tuple[dict[Any, int], int]] = []
    for j, categories in enumerate(enc.categories_):
        values = list(categories)
        codes = list(range(len(values)))
        if fill is not None:
            # None and NaN hash apart in an Index: both map to the fill value's code (-1: not a category).
            target = values.index(fill[j]) if fill[j] in values else -1
            values += [None, np.nan]
            codes += [target, target]
        indexes.append((pd.Index(np.asarray(values, dtype=object)), np.asarray([*codes, -1])))
        is_nan = [isinstance(v, float) and math.isnan(v) for v in values]
        nan_code = codes[is_nan.index(True)] if any(is_nan) else -1
        lookups.append(({v: c for v, c, nan in zip(values, codes, is_nan, strict=True) if not nan}, nan_code))
    offsets = np.cumsum([0, *(len(c) for c in enc.categories_[:-1])])
    width = sum(len(c) for c in enc.categories_)

    def onehot(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), width), dtype=np.float64)
        if len(x) <= _FEW_ROWS:  # a few rows: plain dict lookups beat an Index lookup's fixed cost
            for j, (lookup, nan_code) in enumerate(lookups):
                for i, v in enumerate(x[:, j].tolist()):
                    code = lookup.get(v, -1) if v == v else nan_code  # noqa: PLR0124 - v != v: NaN
                    if code >= 0:
                        out[i, offsets[j] + code] = 1.0
            return out
        rows = np.arange(len(x))
        for j, (index, remap) in enumerate(indexes):
            # get_indexer's -1 (not found) picks remap[-1] = -1. (The stubs want an Index; arrays work.)
            codes = remap[index.get_indexer(x[:, j])]  # type: ignore[arg-type]
            known = codes >= 0  # unknown categories stay all-zero (handle_unknown="ignore")
            out[rows[known], offsets[j] + codes[known]] = 1.0
        return out

    return onehot


@dataclass(frozen=True)
class CompiledFeatures:
    """A fitted ColumnTransformer as (input columns, how they stack, numpy function) blocks."""

    blocks: tuple[tuple[tuple[str, ...], BlockKind, Step], ...]

    @classmethod
    def from_pipeline(cls, pipeline: Any, contract: DatasetContract) -> CompiledFeatures:
        """The compiled preprocessor of a Pipeline made of one ColumnTransformer and an estimator."""
        pre = pipeline[:-1]
        if len(pre) != 1 or not isinstance(pre[0], ColumnTransformer):
            raise NotCompilableError("expected the Pipeline to be one ColumnTransformer + an estimator")
        ct = pre[0]
        if ct.sparse_threshold and ct.sparse_threshold > 0:
            raise NotCompilableError("ColumnTransformer may return a sparse matrix")
        blocks = []
        for name, step, cols in ct.transformers_:
            if (isinstance(step, str) and step == "drop") or len(cols) == 0:
                continue
            if name == "remainder" and ct.remainder == "drop":
                continue
            names = tuple(ct.feature_names_in_[c] if isinstance(c, int | np.integer) else c for c in cols)
            kinds = {contract.column(c).type for c in names}
            kind = (
                "datetime" if kinds == {"datetime"} else ("numeric" if kinds <= {"float", "int", "bool"} else "object")
            )
            blocks.append((names, kind, compile_step(step)))
        return cls(tuple(blocks))

    def transform(self, columns: Columns) -> np.ndarray:
        """The feature matrix of the column arrays, as the ColumnTransformer would give it."""
        parts = []
        for names, kind, fn in self.blocks:
            x = np.column_stack([columns[c] for c in names])
            if kind == "numeric":
                x = x.astype(np.float64, copy=False)
            elif kind == "object":
                x = x.astype(object, copy=False)
            parts.append(fn(x))
        return np.concatenate(parts, axis=1)
