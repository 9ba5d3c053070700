#!/usr/bin/env python3
"""What observing costs a request, measured in process where the machine's noise is small.

    .venv/bin/python loadtests/bench_observe.py [--rounds 12] [--requests 2000]

- the CPU time of one one-row /predict through the whole WSGI app (Flask, validation, the
  model, the answer), with request metrics, the access log and drift each on and off,
  interleaved round by round; the thread's own CPU time, so other processes on the
  machine count less than in a wall-clock figure;
- what drift binning costs a row, by rows per batch (1 row at a time, as a one-row request
  would if it binned its own row; 64 rows, as the batching thread sees one-row traffic;
  10,000 rows, a large request).

Writes loadtests/results/observe.json. The HTTP side (bench.py) compares the whole server
with everything on against `warmstart, unobserved` and the bare stack.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# multiprocess mode, as under gunicorn: set before prometheus_client is imported
SHARED = tempfile.mkdtemp(prefix="bench-observe-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = SHARED

import numpy as np  # noqa: E402

from loadtests import results_file  # noqa: E402

CONFIGS = {
    "all off": {"metrics": False, "access_log": "off", "drift": False},
    "metrics": {"metrics": True, "access_log": "off", "drift": False},
    "access log": {"metrics": False, "access_log": "on", "drift": False},
    "drift": {"metrics": False, "access_log": "off", "drift": True},
    "all on (default)": {"metrics": True, "access_log": "on", "drift": True},
}


def request_cost(rounds: int, requests: int) -> dict[str, float]:
    from func.api.app import create_app
    from func.config import Settings

    model = ROOT / "models" / "model.onnx"
    apps = {}
    for name, options in CONFIGS.items():
        app = create_app(Settings(model_path=str(model), shared_dir=SHARED, **options))
        app.extensions["warmstart"].wait_loaded()
        apps[name] = app
    card = apps["all off"].extensions["warmstart"].model.card
    row = [card.reference[n]["mean"] for n in card.feature_names]
    body = ('{"features": [' + ",".join(map(repr, row)) + "]}").encode()

    def environ() -> dict:
        return {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/predict",
            "SERVER_NAME": "bench",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }

    def start_response(status: str, headers: list, exc_info: object = None) -> None:
        assert status.startswith("200"), status

    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            for _ in range(requests // 10):
                b"".join(app(environ(), start_response))
            started = time.thread_time()
            for _ in range(requests):
                b"".join(app(environ(), start_response))
            samples[name].append((time.thread_time() - started) / requests * 1e6)
    return {name: round(statistics.median(values), 1) for name, values in samples.items()}


def drift_cost() -> dict[str, float]:
    from func.config import Settings
    from func.model.card import ModelCard
    from func.model.runtime import Prediction, load_model
    from func.observe.drift import Drift

    model = load_model(Settings(model_path=str(ROOT / "models" / "model.onnx")))
    card: ModelCard = model.card
    rng = np.random.default_rng(0)
    means = np.array([card.reference[n]["mean"] for n in card.feature_names])
    out = {}
    for batch in (1, 64, 10_000):
        drift = Drift(card, model.sha256, None, None, 10**9, 0.2, 3600.0, lambda *a: None, lambda: ("m", "1", ""))
        rows = (means * rng.uniform(0.5, 1.5, (batch, len(means)))).astype(np.float32)
        prediction = Prediction(np.zeros(batch, dtype=np.int64), None)
        repeats = max(20, 20_000 // batch)
        started = time.thread_time()
        for _ in range(repeats):
            drift._queue.append((rows, prediction.labels))  # what add() queues, without its thread
            drift.flush()
        out[f"{batch} rows per batch, us per row"] = round((time.thread_time() - started) / (repeats * batch) * 1e6, 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args()
    # the access log writes to stdout: send it where it costs a write, not a terminal
    saved = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    try:
        per_request = request_cost(args.rounds, args.requests)
    finally:
        os.dup2(saved, 1)
    per_row = drift_cost()
    base = per_request["all off"]
    print("one-row /predict through the app, CPU us per request (median of rounds):")
    for name, value in per_request.items():
        print(f"  {name:18} {value:7.1f}  {value - base:+6.1f}  ({value / base:.2f}x)")
    print("drift binning:")
    for name, value in per_row.items():
        print(f"  {name:34} {value:8.3f}")
    results_file.write(
        args.out / "observe.json",
        {"settings": vars(args) | {"out": str(args.out)}, "request_cpu_us": per_request, "drift_us_per_row": per_row},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
