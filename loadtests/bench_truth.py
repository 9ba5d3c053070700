#!/usr/bin/env python3
"""What ground truth costs a request, in process where the machine's noise is small.

    .venv/bin/python loadtests/bench_truth.py [--rounds 7] [--requests 3000]

The process's CPU time (every thread: the prediction log's writer included) of a one-row
/predict through the whole WSGI app with everything on (prediction ids and the recent
index are part of it), with the prediction log at PREDICTION_LOG_SAMPLE=1.0 writing a
part every second, with FEEDBACK=0; and of a one-label POST /feedback against the app
with everything on. Interleaved round by round; medians. The HTTP side under load:
`loadtests/bench_features.py --truth`. Writes loadtests/results/truth_in_process.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LOADTESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(LOADTESTS.parent))
sys.path.insert(0, str(LOADTESTS))

import numpy as np  # noqa: E402
import results_file  # noqa: E402

from func.api.app import create_app  # noqa: E402
from func.config import Settings  # noqa: E402


def app_with(env: dict[str, str]) -> Any:
    # one process, no shared folder: the in-memory tallies and index
    settings = dataclasses.replace(Settings.from_env({"ACCESS_LOG": "off", **env}), shared_dir=None)
    app = create_app(settings)
    app.extensions["warmstart"].wait_loaded()
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=LOADTESTS / "results" / "truth_in_process.json")
    args = parser.parse_args()
    log_dir = tempfile.mkdtemp(prefix="warmstart-bench-log-")
    apps = {
        "predict, everything on": app_with({}),
        "predict, prediction log at 1.0": app_with({"PREDICTION_LOG": log_dir, "PREDICTION_LOG_FLUSH_S": "1"}),
        "predict, FEEDBACK=0": app_with({"FEEDBACK": "0"}),
    }
    model = apps["predict, everything on"].extensions["warmstart"].model
    row = np.random.default_rng(0).normal(size=model.card.n_features).tolist()
    feedback_client = apps["predict, everything on"].test_client()
    feedback_client.post("/predict", json={"id": "bench-1", "features": row})
    calls = {name: (app.test_client(), "/predict", {"features": row}) for name, app in apps.items()}
    calls["feedback, one label"] = (feedback_client, "/feedback", {"feedback": [{"id": "bench-1", "label": 1}]})
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(args.rounds):
        for name, (client, path, body) in calls.items():
            started = time.process_time()
            for _ in range(args.requests):
                client.post(path, json=body)
            samples[name].append((time.process_time() - started) / args.requests * 1e6)
            print(f"round {r + 1} {name:32} {samples[name][-1]:7.1f} us CPU a request", flush=True)
    summary = {name: round(statistics.median(values), 1) for name, values in samples.items()}
    print(f"\nmedians of {args.rounds} rounds of {args.requests} requests, CPU us a request")
    for name, value in summary.items():
        print(f"  {name:32} {value:7.1f}")
    results_file.write(args.out, {"settings": vars(args) | {"out": str(args.out)}, "results": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
