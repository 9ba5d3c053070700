"""Watching a serving pod: Prometheus metrics exact across workers (and the shared
tallies under them), the JSON access log and log set-up, OpenTelemetry traces, feature
drift, the events the pod sends on its own, the prediction log (Parquet parts of
predictions and feedback) and the recent-prediction index that feedback is scored
against.

It may import `model` (the card, the Prediction) and the root modules; never `api` or
`server`. `logs` and `emit` import neither NumPy nor onnxruntime: the jobs use them.
"""
