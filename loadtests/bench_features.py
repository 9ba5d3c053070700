#!/usr/bin/env python3
"""What each feature costs under load: one-row /predict at one concurrency with wrk,
the bare stack against warmstart with everything on, with each of metrics, access log,
drift and feedback (prediction ids and the recent index) alone, and with all four off;
interleaved round by round. Both stacks run --workers processes of 4 threads.

    .venv/bin/python loadtests/bench_features.py [--seconds 3] [--rounds 4] [--concurrency 32] [--workers 2]

With --truth, what ground truth costs instead: the bare stack, warmstart with everything
on (prediction ids and the recent index included), the same with the prediction log at
PREDICTION_LOG_SAMPLE=1.0 (Parquet parts in a temporary folder), with FEEDBACK=0, and a
one-label POST /feedback against the same server with everything on. Writes
loadtests/results/truth.json.

Besides req/s it reports the servers' CPU time per request (user + system of the whole
process tree, read from /proc before and after each wrk run): a steadier figure than
req/s on a machine where wrk and the servers share the cores, and the one to compare
when a change should make a feature cheaper. Loopback only; every run is bounded.
Writes loadtests/results/features.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

LOADTESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(LOADTESTS))

import bench  # noqa: E402
import results_file  # noqa: E402

OFF = {"METRICS": "0", "ACCESS_LOG": "off", "DRIFT": "0", "FEEDBACK": "0"}
VARIANTS = {
    "everything on": {},
    "metrics only": {**OFF, "METRICS": "1"},
    "access log only": {**OFF, "ACCESS_LOG": "on"},
    "drift only": {**OFF, "DRIFT": "1"},
    "feedback only": {**OFF, "FEEDBACK": "1"},
    "all four off": OFF,
}


# One label per request, for a row the server answered when the run started; its later
# copies are matched and not scored again, as a broker's retries are.
FEEDBACK_BODY = json.dumps({"feedback": [{"id": "bench-1", "label": 1}]})


def answered_bench_1(url: str) -> None:
    """The row the feedback run labels, answered (another worker may still be loading:
    503 with Retry-After until it has)."""
    deadline = time.monotonic() + 60
    while requests.post(url, json={"id": "bench-1", "features": bench.row()}, timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}: no prediction within 60 s")
        time.sleep(0.1)


def servers(truth: bool, log_dir: str, workers: int) -> dict[str, bench.System]:
    bare = bench.systems()["bare Flask + onnxruntime"]
    bare.cmd = [str(workers) if previous == "-w" else part for previous, part in zip(["", *bare.cmd], bare.cmd)]
    found = {bare.name: bare}
    base = bench.systems()["warmstart"]
    base.env["WORKERS"] = str(workers)
    variants = (
        {
            "everything on": {},
            "everything on, prediction log at 1.0": {"PREDICTION_LOG": log_dir, "PREDICTION_LOG_SAMPLE": "1"},
            "everything on, FEEDBACK=0": {"FEEDBACK": "0"},
        }
        if truth
        else VARIANTS
    )
    for name, env in variants.items():
        found[f"warmstart, {name}"] = bench.System(f"warmstart, {name}", base.cmd, {**base.env, **env})
    if truth:
        name = "warmstart, POST /feedback (one label)"
        found[name] = bench.System(name, base.cmd, base.env, path="/feedback", body=FEEDBACK_BODY)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants."""
    total = 0
    for p in [pid, *bench._children(pid)]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="server processes of each system")
    parser.add_argument("--truth", action="store_true", help="what ground truth costs (see above)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or LOADTESTS / "results" / ("truth.json" if args.truth else "features.json")
    bench.ensure_prerequisites()
    log_dir = tempfile.mkdtemp(prefix="warmstart-bench-log-")
    systems = servers(args.truth, log_dir, args.workers)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in systems}
    try:
        bodies = {}
        for name, system in systems.items():
            system.start()
            if system.path == "/feedback":
                answered_bench_1(system.url.replace("/feedback", "/predict"))
            bodies[name] = Path(tempfile.mkstemp(suffix=".json")[1])
            bodies[name].write_text(system.body)
        for r in range(args.rounds):
            for name, system in systems.items():
                assert system.proc is not None
                before = cpu_seconds(system.proc.pid)
                result = bench.wrk(system.url, args.concurrency, args.seconds, bodies[name])
                if result["non2xx"] or result["socket_errors"]:
                    raise RuntimeError(f"{name}: {result['non2xx']} non-2xx, {result['socket_errors']} socket errors")
                cpu_us = (cpu_seconds(system.proc.pid) - before) / result["requests"] * 1e6
                samples[name].append((result["rps"], cpu_us))
                print(f"round {r + 1} {name:34} {result['rps']:8,.0f} req/s {cpu_us:7.1f} us CPU a request", flush=True)
    finally:
        for system in systems.values():
            system.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    bare = statistics.median(rps for rps, _ in samples["bare Flask + onnxruntime"])
    summary = {}
    bare_cpu = statistics.median(c for _, c in samples["bare Flask + onnxruntime"])
    print(f"\n{args.workers} worker(s), c={args.concurrency}, medians of {args.rounds} rounds of {args.seconds:g} s")
    for name, runs in samples.items():
        rps, cpu = statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs)
        summary[name] = {
            "rps": round(rps),
            "ratio_to_bare": round(rps / bare, 3),
            "cpu_us_per_request": round(cpu, 1),
            "requests_per_cpu_s_to_bare": round(bare_cpu / cpu, 3),
        }
        print(
            f"  {name:34} {rps:8,.0f} req/s {rps / bare:5.2f}x bare {cpu:7.1f} us CPU a request "
            f"({bare_cpu / cpu:.2f}x bare's requests per CPU-second)"
        )
    results_file.write(args.out, {"settings": vars(args) | {"out": str(args.out)}, "results": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
