"""The naive approach users start from: FastAPI + joblib, one row per request.

    MODEL_PATH=models/model.joblib uvicorn loadtests.baseline.naive_app:app --port 8001
    gunicorn -w 2 -k uvicorn_worker.UvicornWorker loadtests.baseline.naive_app:app

Written the way tutorials write it: a pydantic body, the scikit-learn model called on a
one-row list. It is what warmstart is measured against, not something to deploy.
"""

import os

import joblib
from fastapi import FastAPI
from pydantic import BaseModel

model = joblib.load(os.environ.get("MODEL_PATH", "models/model.joblib"))
app = FastAPI()


class Features(BaseModel):
    features: list[float]


@app.post("/predict")
def predict(body: Features) -> dict:
    return {"probability": float(model.predict_proba([body.features])[0][1])}
