"""The retraining job (`python -m func.retrain`, the image's `trainer` target): read
fresh data (a file, or the prediction log joined with its feedback: `dataset`, also
`python -m func.dataset`), train with the team's trainer, evaluate the candidate against
the current model, publish only a model that is not worse, and announce the outcome as
an event.

A job beside the server: it may import `model`, `observe` (logs, events out) and the
root modules; never `server` or `api`.
"""
