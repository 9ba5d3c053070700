"""The model runtime: load (onnx / skops / joblib), warm up and predict on a 2-D float
array; the card; where the model file comes from (paths, URIs, the MLflow registry);
the champion a promotion moves; readiness across a pod's workers; the ONNX reader;
export to ONNX; adaptive batching.

The bottom wing: it imports no other wing, only the root modules (`config`, `errors`).
"""
