"""A KServe ModelServer serving the joblib model, the way KServe's docs write a custom
model: load in load(), predict on the V1 `instances`. Run from loadtests/.peers/kserve:

    MODEL_PATH=models/model.joblib loadtests/.peers/kserve/bin/python loadtests/baseline/kserve_app.py --http_port 8002
"""

import os

import joblib
import kserve
import numpy as np


class SKLearnModel(kserve.Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.model = None
        self.load()

    def load(self) -> bool:
        self.model = joblib.load(os.environ.get("MODEL_PATH", "models/model.joblib"))
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        rows = np.asarray(payload["instances"], dtype=np.float64)
        return {"predictions": self.model.predict_proba(rows)[:, 1].tolist()}


if __name__ == "__main__":
    kserve.ModelServer().start([SKLearnModel("breast-cancer-rf")])
