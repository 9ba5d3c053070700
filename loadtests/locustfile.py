"""Load your own warmstart deployment with locust (not for this machine's loopback
benchmark, which uses wrk: locust's Python workers would compete with the server).

    pip install -r loadtests/requirements.txt
    locust -f loadtests/locustfile.py --host https://warmstart.default.example.com \
        --users 50 --spawn-rate 10 --run-time 5m --headless

Users send one-row HTTP predictions, 10-row predictions, and predict CloudEvents in
binary mode (as a Knative broker delivers them), 6:2:2. Rows come from the model card's
reference statistics (GET /model), so they fit whatever model is deployed.
"""

from __future__ import annotations

import json
import random
import uuid

from locust import HttpUser, between, task

JSON = {"Content-Type": "application/json"}


class PredictionUser(HttpUser):
    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        card = self.client.get("/model", name="/model").json()
        self.reference = [card["reference"].get(name, {"mean": 0.0, "std": 1.0}) for name in card["feature_names"]]

    def row(self) -> list[float]:
        return [random.gauss(r["mean"], r["std"] or 1.0) for r in self.reference]

    @task(6)
    def predict_one(self) -> None:
        self.client.post("/predict", data=json.dumps({"features": self.row()}), headers=JSON, name="/predict 1 row")

    @task(2)
    def predict_ten(self) -> None:
        body = json.dumps({"instances": [self.row() for _ in range(10)]})
        self.client.post("/predict", data=body, headers=JSON, name="/predict 10 rows")

    @task(2)
    def predict_event(self) -> None:
        headers = {
            **JSON,
            "ce-specversion": "1.0",
            "ce-type": "warmstart.predict.v1",
            "ce-source": "/locust",
            "ce-id": str(uuid.uuid4()),
        }
        with self.client.post(
            "/",
            data=json.dumps({"features": self.row()}),
            headers=headers,
            name="CloudEvent warmstart.predict.v1",
            catch_response=True,
        ) as resp:
            if resp.headers.get("ce-type") != "warmstart.prediction.v1":
                resp.failure(f"expected a warmstart.prediction.v1 reply, got {resp.status_code}")
