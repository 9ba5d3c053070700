"""The bare stack: Flask + onnxruntime under gunicorn, with no validation, metrics,
headers or events. The ceiling of the stack warmstart is built on, run with the same
gunicorn layout as warmstart (2 processes x 4 threads, 30 s keep-alive, a listening
socket per worker).

    MODEL_PATH=models/model.onnx gunicorn -w 2 -k gthread --threads 4 --keep-alive 30 --reuse-port \
        loadtests.baseline.bare_app:app
"""

import json
import os

import numpy as np
import onnxruntime as ort
from flask import Flask, request

options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(os.environ.get("MODEL_PATH", "models/model.onnx"), options)
app = Flask(__name__)


@app.post("/predict")
def predict() -> tuple[str, int, dict]:
    rows = np.asarray([json.loads(request.get_data())["features"]], dtype=np.float32)
    _, probabilities = session.run(None, {"input": rows})
    return json.dumps({"probability": float(probabilities[0, 1])}), 200, {"Content-Type": "application/json"}
