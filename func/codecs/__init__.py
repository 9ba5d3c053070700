"""Wire formats to the one internal form and back: JSON bodies (own API, V1, V2
data) and Arrow columns (batch files) into a 2-D float array checked against the card,
and predictions back into JSON bodies; feedback bodies (labels by prediction id) checked
against the card's classes.

Shared by `api` and `batch`, so it lives below both. It may import `model` (the card,
the Prediction) and the root modules (`errors`); nothing above it.
"""
