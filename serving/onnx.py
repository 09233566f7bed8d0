"""A Pipeline's estimator on ONNX Runtime.

Imported only when a model is converted (serving.predictor.Predictor.with_onnx): skl2onnx alone takes
seconds to import. The features stay on the compiled numpy path (core.modeling.compiled) and only the
estimator is converted. Whatever the conversion, the predictor serves the session only after it
matched scikit-learn on synthetic contract rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.pipeline import Pipeline


@dataclass(frozen=True)
class OnnxEstimator:
    """An ONNX Runtime session standing in for a fitted estimator's predict_proba (or predict)."""

    session: ort.InferenceSession
    input_name: str
    output_name: str

    def run(self, X: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities, or (n, 1) values for a regressor, as float64."""
        out = self.session.run([self.output_name], {self.input_name: X.astype(np.float32)})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(X), -1)


def convert(estimator: Any, n_features: int, *, threads: int = 1) -> OnnxEstimator:
    """`estimator` (fitted, fed `n_features` float columns) as an ONNX Runtime session.

    Raises whatever skl2onnx or ONNX Runtime raise for an estimator they cannot handle.
    """
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    classifier = hasattr(estimator, "predict_proba")
    options = {id(final): {"zipmap": False}} if classifier else None
    onx = to_onnx(estimator, np.zeros((1, n_features), dtype=np.float32), options=options, target_opset=None)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(onx.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    # A classifier's outputs are (label, probabilities); a regressor's one output is the value.
    return OnnxEstimator(session, session.get_inputs()[0].name, outputs[-1] if classifier else outputs[0])
