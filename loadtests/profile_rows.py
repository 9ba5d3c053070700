#!/usr/bin/env python3
"""Where one 10,000-row JSON request's time goes, in process, step by step.

    .venv/bin/python loadtests/profile_rows.py [--rows 10000] [--rounds 7] [--calls 10]

The body is loadtests/bench_rows.py's: 30 float32 values a row written as 17-digit
numbers (6.0 MB for 10,000 rows). Each step runs as the KServe V1 route runs it:
simdjson's parse alone, the fast path's checks around it, validation into float32,
the model call, encoding the answer, and the whole route through Flask's test client
(ids, the recent index and drift's queue included). Beside them, the other ways to
read the same body into float32 rows (what KServe does: orjson, then NumPy; a NumPy
scanner over the bytes). Steps are interleaved round by round; medians of the rounds'
medians. Writes loadtests/results/rows_profile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import simdjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtests"))

import results_file  # noqa: E402
from bench_rows import MODEL, MODEL_NAME, rows  # noqa: E402

# Bytes that are not part of a number, for the NumPy scanner.
_SEPARATORS = bytes.maketrans(b"[],", b"   ")


def steps(n: int) -> dict[str, Callable[[], object]]:
    os.environ.update({"MODEL_PATH": str(MODEL), "MAX_ROWS": str(n), "ACCESS_LOG": "off"})
    from func.api.app import create_app
    from func.codecs import fast_rows
    from func.codecs import rows as codecs
    from func.config import Settings

    body = json.dumps({"instances": rows(n).tolist()}).encode()
    app = create_app(Settings.from_env())
    state = app.extensions["warmstart"]
    deadline = time.monotonic() + 60
    while not state.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    model = state.model
    card = model.card
    parser = simdjson.Parser()
    found = fast_rows.rows_and_field(body, "instances", card.n_features, n, "id")
    assert found is not None, "the body did not take the fast path"
    parsed = found[0]
    validated = codecs.check_rows(parsed, card, "instances")
    prediction = model.predict(validated)
    client = app.test_client()
    v1 = f"/v1/models/{MODEL_NAME}:predict"
    headers = {"Content-Type": "application/json"}
    start = body.index(b"[")

    def route(path: str) -> None:
        resp = client.post(path, data=body, headers=headers)
        assert resp.status_code == 200, resp.text[:200]

    def parse_only() -> None:
        doc = parser.parse(body)
        del doc  # the parser is reused: no proxy may outlive the call

    return {
        "simdjson parse alone": parse_only,
        "fast path (parse, checks, copy out)": lambda: fast_rows.rows_and_field(
            body, "instances", card.n_features, n, "id"
        ),
        "validate into float32 (check_rows)": lambda: codecs.check_rows(parsed, card, "instances"),
        "model call (onnxruntime)": lambda: model.predict(validated),
        "encode V1 answer (labels)": lambda: codecs.dump_json({"predictions": prediction.labels}),
        "encode /predict answer (+ probabilities)": lambda: codecs.dump_json(codecs.prediction_body(prediction, card)),
        "whole V1 route, in process": lambda: route(v1),
        "whole /predict route, in process": lambda: route("/predict"),
        "other way: orjson, then NumPy (KServe)": lambda: np.asarray(
            orjson.loads(body)["instances"], dtype=np.float64
        ).astype(np.float32),
        "other way: NumPy scanner over the bytes": lambda: np.fromstring(
            body[start:-1].translate(_SEPARATORS), dtype=np.float64, sep=" "
        ).astype(np.float32),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="calls per step and round")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "rows_profile.json")
    args = parser.parse_args()

    cases = steps(args.rows)
    medians: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, call in cases.items():
            call()
            times = []
            for _ in range(args.calls):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            medians[name].append(statistics.median(times))
    results = []
    for name, values in medians.items():
        ms = statistics.median(values) * 1000
        results.append({"step": name, "rows": args.rows, "median_ms": ms})
        print(f"{args.rows:>6} rows  {name:44} {ms:7.2f} ms", flush=True)
    results_file.write(args.out, {"rounds": args.rounds, "calls": args.calls, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
