"""A Pipeline's estimator on ONNX Runtime: the conversion recipes, one place for every model family.

Imported only when a model is converted (core.inference.predictor.Predictor.with_onnx): skl2onnx alone takes
seconds to import. The features stay on the compiled numpy path (core.modeling.compiled) and only the
estimator is converted: a whole-Pipeline graph was measured 2-3x slower per request (string inputs,
dozens of small nodes). Whatever the recipe, the predictor serves the session only after it matched
scikit-learn on synthetic contract rows.

The recipes, per family of core.modeling.families (found by measuring parity with skl2onnx 1.20,
onnx 1.23, protobuf 7, onnxruntime 1.31):

* logistic / Ridge, mlp, svm's calibrated LinearSVC or LinearSVR: skl2onnx's own converters, float32 input.
* random_forest: float32 input, as scikit-learn's trees compare float32 features themselves (fed
  float64, ONNX compares against float32 thresholds and moves rows across them).
* hist_gradient_boosting: float64 input and float64 thresholds. scikit-learn compares float64
  features with float64 thresholds, and some splits separate values one ulp apart (the time
  features' cos(2 pi/7) and cos(12 pi/7)), so float32 thresholds flip rows (|dp| up to 0.19). skl2onnx
  writes thresholds as float attributes (ai.onnx.ml v1); `_TreeNode` writes its TreeEnsemble node
  as ai.onnx.ml v3 with double `*_as_tensor` attributes. It also turns the node's
  nodes_missing_value_tracks_true into ints: skl2onnx puts Python bools among them for leaves, which
  protobuf 7 refuses ("Expected an int, got a boolean"): without this no HistGradientBoosting converts.
* svm's Nystroem kernel: skl2onnx has no converter; `_convert_nystroem` (rbf kernel) is registered.

The input dtype a session is fed is the one it declares, not a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from skl2onnx import to_onnx, update_registered_converter
from skl2onnx.algebra.onnx_ops import OnnxAdd, OnnxExp, OnnxMatMul, OnnxMax, OnnxMul, OnnxReduceSumSquare
from skl2onnx.common._apply_operation import apply_cast
from skl2onnx.common._registration import get_converter, get_shape_calculator
from skl2onnx.common.data_types import guess_numpy_type
from skl2onnx.operator_converters.random_forest import (
    convert_sklearn_random_forest_classifier,
    convert_sklearn_random_forest_regressor_converter,
)
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import Pipeline

# ai.onnx.ml 3 is the first version with double tree attributes; 21 is skl2onnx 1.20's newest main opset.
TARGET_OPSET = {"": 21, "ai.onnx.ml": 3}
_DTYPES: dict[str, type[np.floating[Any]]] = {"tensor(float)": np.float32, "tensor(double)": np.float64}


@dataclass(frozen=True)
class OnnxEstimator:
    """An ONNX Runtime session standing in for a fitted estimator's predict_proba (or predict)."""

    session: ort.InferenceSession
    input_name: str
    input_dtype: type[np.floating[Any]]
    output_name: str

    def run(self, X: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities, or (n, 1) values for a regressor, as float64."""
        out = self.session.run([self.output_name], {self.input_name: X.astype(self.input_dtype, copy=False)})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(X), -1)


def convert(estimator: Any, n_features: int, *, threads: int = 1) -> OnnxEstimator:
    """`estimator` (fitted, fed `n_features` float columns) as an ONNX Runtime session.

    Raises whatever skl2onnx or ONNX Runtime raise for an estimator they cannot handle.
    """
    _register()
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    classifier = hasattr(estimator, "predict_proba")
    double = _holds(estimator, (HistGradientBoostingClassifier, HistGradientBoostingRegressor))
    example = np.zeros((1, n_features), dtype=np.float64 if double else np.float32)
    options = {id(final): {"zipmap": False}} if classifier else None
    onx = to_onnx(estimator, example, options=options, target_opset=TARGET_OPSET)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(onx.SerializeToString(), so, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    outputs = [o.name for o in session.get_outputs()]
    # A classifier's outputs are (label, probabilities); a regressor's one output is the value.
    return OnnxEstimator(
        session, model_input.name, _DTYPES[model_input.type], outputs[-1] if classifier else outputs[0]
    )


def _holds(estimator: Any, types: tuple[type, ...]) -> bool:
    steps = [s for _, s in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]
    return any(isinstance(s, types) for s in steps)


# ---- registrations: process-wide in skl2onnx, so done once ----------------------------------------

_registered = False


def _register() -> None:
    global _registered  # noqa: PLW0603 - skl2onnx's registry is itself process-global
    if _registered:
        return
    for model, alias, convert_fn in (
        (HistGradientBoostingClassifier, "SklearnHistGradientBoostingClassifier", _convert_hgb_classifier),
        (HistGradientBoostingRegressor, "SklearnHistGradientBoostingRegressor", _convert_hgb_regressor),
    ):
        update_registered_converter(
            model,
            alias,
            get_shape_calculator(alias),
            convert_fn,
            overwrite=True,
            options=get_converter(alias).get_allowed_options(),
        )
    update_registered_converter(Nystroem, "SklearnNystroem", _nystroem_shape, _convert_nystroem)
    _registered = True


# ---- HistGradientBoosting: double thresholds ------------------------------------------------------

_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
# Attributes that ai.onnx.ml 3 also takes as a tensor (of doubles, here) under `<name>_as_tensor`.
_DOUBLE_ATTRIBUTES = ("nodes_values", "nodes_hitrates", "class_weights", "target_weights", "base_values")


class _TreeNode:
    """A stand-in for skl2onnx's container while a HistGradientBoosting converter runs: every call
    passes through but the TreeEnsemble node's, which gets int missing-value flags and, for a double
    input, double attributes and a cast of its float scores to the double outputs skl2onnx declared."""

    def __init__(self, container: Any, scope: Any, *, double: bool) -> None:
        self._container = container
        self._scope = scope
        self._double = double

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, op_type: str, inputs: Any, outputs: Any, *args: Any, **attrs: Any) -> None:
        if op_type not in _TREE_OPS:
            self._container.add_node(op_type, inputs, outputs, *args, **attrs)
            return
        attrs["nodes_missing_value_tracks_true"] = [int(v) for v in attrs["nodes_missing_value_tracks_true"]]
        if not self._double:
            self._container.add_node(op_type, inputs, outputs, *args, **attrs)
            return
        for name in _DOUBLE_ATTRIBUTES:
            if name in attrs:
                values = np.asarray(attrs.pop(name), dtype=np.float64).ravel()
                attrs[f"{name}_as_tensor"] = numpy_helper.from_array(values, name=f"{name}_as_tensor")
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        declared = outputs[-1]  # the scores: a classifier's probabilities, a regressor's values
        # TreeEnsemble* always outputs tensor(float), whatever its input and attribute types.
        scores = self._scope.get_unique_variable_name("tree_scores")
        self._container.add_node(op_type, inputs, [*outputs[:-1], scores], *args, **attrs)
        apply_cast(self._scope, scores, declared, self._container, to=TensorProto.DOUBLE)


def _convert_hgb_classifier(scope: Any, operator: Any, container: Any) -> None:
    double = guess_numpy_type(operator.inputs[0].type) == np.float64
    node = _TreeNode(container, scope, double=double)
    convert_sklearn_random_forest_classifier(scope, operator, node, op_version=3 if double else 1)


def _convert_hgb_regressor(scope: Any, operator: Any, container: Any) -> None:
    double = guess_numpy_type(operator.inputs[0].type) == np.float64
    node = _TreeNode(container, scope, double=double)
    convert_sklearn_random_forest_regressor_converter(scope, operator, node, op_version=3 if double else 1)


# ---- Nystroem (rbf): exp(-gamma * |x - c|^2) @ normalization_.T ----------------------------------


def _nystroem_shape(operator: Any) -> None:
    n = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = operator.inputs[0].type.__class__([n, operator.raw_operator.normalization_.shape[0]])


def _convert_nystroem(scope: Any, operator: Any, container: Any) -> None:
    op = operator.raw_operator
    if op.kernel != "rbf":
        raise NotImplementedError(f"no ONNX converter for Nystroem(kernel={op.kernel!r}), only rbf")
    dtype = guess_numpy_type(operator.inputs[0].type)
    gamma = op.gamma if op.gamma is not None else 1.0 / op.components_.shape[1]
    version = container.target_opset
    x = operator.inputs[0]
    c = op.components_.astype(dtype)
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2, clipped at 0 as scikit-learn's euclidean_distances clips it.
    xx = OnnxReduceSumSquare(x, np.array([1], dtype=np.int64), keepdims=1, op_version=version)
    cc = (c**2).sum(axis=1)[None, :].astype(dtype)
    xc = OnnxMatMul(x, (-2.0 * c.T).astype(dtype), op_version=version)
    d2 = OnnxMax(
        OnnxAdd(OnnxAdd(xc, xx, op_version=version), cc, op_version=version),
        np.array([0], dtype=dtype),
        op_version=version,
    )
    kernel = OnnxExp(OnnxMul(d2, np.array([-gamma], dtype=dtype), op_version=version), op_version=version)
    out = OnnxMatMul(kernel, op.normalization_.T.astype(dtype), op_version=version, output_names=operator.outputs[:1])
    out.add_to(scope, container)
