"""warmstart: a serverless inference function for Knative."""
