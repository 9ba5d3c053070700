"""Explanations: exact TreeSHAP from the ONNX model's tree ensembles, a
model-agnostic Shapley estimate for any other model, and the explainer that picks one.

It may import `model` and the root modules; never `api` or `server`.
"""
