#!/usr/bin/env python3
"""Latency of explanations of the default model (exact TreeSHAP, 100 trees of depth 8).

    .venv/bin/python loadtests/bench_explain.py [--seconds 6] [--rounds 3]

One server, one worker, loopback only. Measured: the first explanation after start-up
(it reads the trees from the model file), then one-row explanations over HTTP (the goal:
a median of at most 10 ms on a 2-core machine) beside one-row predictions on the same
server, 10- and 100-row explanations, and TreeSHAP in-process on one row (what HTTP and
JSON add is the difference). Cases are interleaved round by round so machine drift hits
all of them alike; each request sends another training row. Writes
loadtests/results/explain.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtests"))

import results_file  # noqa: E402

from tests.support.server import DEFAULT_MODEL, ServerProcess  # noqa: E402

GOAL_MS = 10.0
JSON = {"Content-Type": "application/json"}


def training_rows() -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer().data.astype(np.float32)


def over_http(session: requests.Session, url: str, path: str, x: np.ndarray, n: int) -> Callable[[], None]:
    """POST `n` rows at a time, a different slice of the training rows each call."""
    bodies = [json.dumps({"instances": np.roll(x, -i, axis=0)[:n].tolist()}) for i in range(0, 64)]
    count = iter(range(1 << 62))

    def call() -> None:
        resp = session.post(url + path, data=bodies[next(count) % len(bodies)], headers=JSON)
        assert resp.status_code == 200, resp.text[:200]

    return call


def in_process(x: np.ndarray) -> Callable[[], None]:
    from func.config import Settings
    from func.explain.explainers import build_explainer
    from func.model.runtime import load_model

    model = load_model(Settings(model_path=str(DEFAULT_MODEL)))
    explainer = build_explainer(model)
    count = iter(range(1 << 62))

    def call() -> None:
        i = next(count) % len(x)
        row = x[i : i + 1]
        explainer.explain(row, model.predict(row).probabilities.argmax(axis=1))

    return call


def timed(call: Callable[[], None], seconds: float) -> list[float]:
    call()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="per case, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "explain.json")
    args = parser.parse_args()

    x = training_rows()
    server = ServerProcess({"WORKERS": "1"}).start()
    try:
        server.wait_ready()
        session = requests.Session()
        started = time.perf_counter()
        over_http(session, server.url, "/explain", x, 1)()
        first_ms = (time.perf_counter() - started) * 1000
        print(f"first explanation after start-up (reads the trees): {first_ms:.1f} ms", flush=True)
        cases = {
            "/predict, 1 row": (over_http(session, server.url, "/predict", x, 1), 1),
            "/explain, 1 row": (over_http(session, server.url, "/explain", x, 1), 1),
            "/explain, 10 rows": (over_http(session, server.url, "/explain", x, 10), 10),
            "/explain, 100 rows": (over_http(session, server.url, "/explain", x, 100), 100),
            "TreeSHAP in-process, 1 row": (in_process(x), 1),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (call, _) in cases.items():
                samples[name] += timed(call, args.seconds / args.rounds)
    finally:
        server.kill()

    results = []
    for name, times in samples.items():
        rows = cases[name][1]
        median, p99 = statistics.median(times), float(np.percentile(times, 99))
        results.append(
            {"case": name, "rows": rows, "median_ms": median * 1000, "p99_ms": p99 * 1000, "requests": len(times)}
        )
        print(
            f"{name:28} median {median * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms  "
            f"({median * 1000 / rows:.2f} ms/row, {len(times)} requests)",
            flush=True,
        )
    one_row = next(r for r in results if r["case"] == "/explain, 1 row")["median_ms"]
    verdict = "meets" if one_row <= GOAL_MS else "misses"
    print(f"one-row explanation over HTTP: median {one_row:.2f} ms, {verdict} the {GOAL_MS:.0f} ms goal")
    results_file.write(
        args.out,
        {"first_explanation_ms": first_ms, "goal_ms": GOAL_MS, "one_row_median_ms": one_row, "results": results},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
