"""The prediction path shared by the API and batch scoring: the predictor (compiled features, ONNX
Runtime or scikit-learn), the ONNX recipes and the synthetic contract rows that check them.

Kept light at import: nothing here imports mlflow or skl2onnx until a model is converted.
"""
