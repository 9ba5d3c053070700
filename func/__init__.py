"""warmstart: a serverless inference function for Knative."""

__version__ = "0.1.0"
