"""Canary rollouts of a new model on a Knative Service, decided by the revisions' own
numbers: `python -m func.rollout` (start, analyse, promote, rollback, or run = all).

Nothing here imports Flask, NumPy or onnxruntime: the rollout runs as its own job
(knative/rollout/, requirements-rollout.txt).
"""
