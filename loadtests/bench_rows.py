#!/usr/bin/env python3
"""Rows per second of one large request, per protocol, against onnxruntime in-process.

    .venv/bin/python loadtests/bench_rows.py [--rows 1000 10000] [--seconds 3] [--peers kserve]

For each request size: warmstart's own JSON (`/predict`, labels and probabilities), the
same body on its KServe V1 route (labels only), Open Inference Protocol V2 as
JSON and with the binary tensor data extension, and onnxruntime called in-process on the
same float32 rows (the physical limit), interleaved round by round so machine drift hits
all of them alike. One server, one worker, loopback only, bounded by --seconds per case.
Writes loadtests/results/rows.json.
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
import onnxruntime as ort
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtests"))

import results_file  # noqa: E402

from tests.support.server import ServerProcess  # noqa: E402

MODEL = ROOT / "models" / "model.onnx"
MODEL_NAME = "breast-cancer-rf"


def rows(n: int) -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data
    return x[np.arange(n) % len(x)].astype(np.float32)


def own_json(session: requests.Session, url: str, x: np.ndarray) -> Callable[[], None]:
    body = json.dumps({"instances": x.tolist()})

    def call() -> None:
        resp = session.post(url + "/predict", data=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 200, resp.text[:200]

    return call


def kserve_v1(session: requests.Session, url: str, x: np.ndarray) -> Callable[[], None]:
    """The same body on the KServe V1 route, which answers labels only, as KServe does."""
    body = json.dumps({"instances": x.tolist()})

    def call() -> None:
        resp = session.post(
            url + f"/v1/models/{MODEL_NAME}:predict", data=body, headers={"Content-Type": "application/json"}
        )
        assert resp.status_code == 200, resp.text[:200]

    return call


def v2_json(session: requests.Session, url: str, x: np.ndarray) -> Callable[[], None]:
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    )

    def call() -> None:
        resp = session.post(url + f"/v2/models/{MODEL_NAME}/infer", data=body)
        assert resp.status_code == 200, resp.text[:200]

    return call


def v2_binary(session: requests.Session, url: str, x: np.ndarray) -> Callable[[], None]:
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + raw
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}

    def call() -> None:
        resp = session.post(url + f"/v2/models/{MODEL_NAME}/infer", data=body, headers=headers)
        assert resp.status_code == 200, resp.text[:200]

    return call


def in_process(x: np.ndarray, threads: int | None) -> Callable[[], None]:
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])

    def call() -> None:
        session.run(None, {"input": x})

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


def measure(
    url: str,
    sizes: list[int],
    seconds: float,
    rounds: int,
    others: Callable[[np.ndarray], dict[str, Callable[[], None]]] | None = None,
) -> list[dict]:
    """Rows/s of each protocol on the server at `url`, and of onnxruntime in-process;
    `others(x)` adds more systems' calls on the same rows, interleaved with these."""
    session = requests.Session()
    results = []
    for n in sizes:
        x = rows(n)
        cases = {
            "warmstart JSON /predict": own_json(session, url, x),
            "warmstart KServe V1 JSON": kserve_v1(session, url, x),
            "warmstart V2 JSON": v2_json(session, url, x),
            "warmstart V2 binary": v2_binary(session, url, x),
            "onnxruntime in-process, 1 thread": in_process(x, 1),
            "onnxruntime in-process, default threads": in_process(x, None),
            **(others(x) if others else {}),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, call in cases.items():
                samples[name] += timed(call, seconds / rounds)
        limit = n / statistics.median(samples["onnxruntime in-process, default threads"])
        for name, times in samples.items():
            median = statistics.median(times)
            entry = {
                "system": name,
                "rows": n,
                "median_ms": median * 1000,
                "rows_per_s": n / median,
                "ratio_to_in_process": n / median / limit,
                "requests": len(times),
            }
            results.append(entry)
            print(
                f"{n:>6} rows  {name:42} {median * 1000:8.2f} ms  {n / median:>11,.0f} rows/s  "
                f"{entry['ratio_to_in_process']:.2f}x in-process",
                flush=True,
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seconds", type=float, default=3.0, help="per case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", nargs="*", choices=["kserve"], default=[], help="peers to add to the rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "rows.json")
    args = parser.parse_args()

    server = ServerProcess({"WORKERS": "1", "MAX_ROWS": str(max(args.rows))}).start()
    peers = {}
    others = None
    try:
        if "kserve" in args.peers:
            import bench  # imports this module: only here, for its peers

            peers[KSERVE] = bench.kserve_peer()
            peers[KSERVE].start()
            others = bench.peer_calls(peers)
        server.wait_ready()
        results = measure(server.url, args.rows, args.seconds, args.rounds, others)
    finally:
        server.kill()
        for peer in peers.values():
            peer.stop()
    ratios = ratios_to(KSERVE, results) if peers else []
    results_file.write(args.out, {"results": results, **({"ratios_to_kserve": ratios} if ratios else {})})
    return 0


KSERVE = "KServe ModelServer"


def ratios_to(peer: str, results: list[dict]) -> list[dict]:
    """Each warmstart case's rows/s over `peer`'s on the same rows, printed."""
    found = []
    for entry in results:
        base = next(r for r in results if r["system"] == peer and r["rows"] == entry["rows"])
        if entry["system"].startswith("warmstart"):
            ratio = entry["rows_per_s"] / base["rows_per_s"]
            found.append({"system": entry["system"], "rows": entry["rows"], "ratio": ratio})
            print(f"{entry['rows']:>6} rows  {entry['system']:42} {ratio:.2f}x {peer}")
    return found


if __name__ == "__main__":
    sys.exit(main())
