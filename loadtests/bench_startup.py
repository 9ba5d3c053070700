#!/usr/bin/env python3
"""warmstart's start, memory and request CPU against the bare stack, in one run.

    flock /tmp/warmstart-bench.lock .venv/bin/python loadtests/bench_startup.py \
        [--starts 7] [--seconds 3] [--rounds 4] [--workers 1 2 4] [--skip-cold | --skip-cpu]

The bare stack is loadtests/baseline/bare_app.py under gunicorn with warmstart's layout
(the same workers, 4 threads, a listening socket per worker). Interleaved start by start
and round by round:

- cold start: exec until the pod is ready and has answered a first prediction. warmstart
  is ready when /health/readiness says so (every worker has loaded the model); the bare
  stack has no readiness, so its first 200 from /predict. Also warmstart's first 200
  alone, before readiness, and the CPU time the server's processes used until ready;
- memory: RSS of the largest process and of all of them, once ready and again after
  --seconds of load at c=32;
- request CPU: one-row /predict at c=32 with wrk for each --workers, the servers' CPU
  time (user + system of the process tree, from /proc) per request, and requests per
  CPU-second against the bare stack's: the figure that does not depend on how many
  cores the machine has spare.

func's bytecode is compiled first (python -m compileall func/), as the image does: with
PYTHONDONTWRITEBYTECODE=1 and no __pycache__, every start would compile warmstart's own
modules again (about 100 ms here) while the bare stack has one small module to compile.

With --compare DIR, also the warmstart of another checkout (a copy from before a change).

Writes loadtests/results/startup.json. Loopback only; every phase is bounded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

LOADTESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(LOADTESTS))

import bench  # noqa: E402
import results_file  # noqa: E402
from bench_features import cpu_seconds  # noqa: E402

WARMSTART = "warmstart"
BARE = "bare Flask + onnxruntime"
THREADS = 4


def make(name: str, workers: int) -> bench.System:
    if name.startswith(WARMSTART):
        env = {"MODEL_PATH": str(bench.ONNX), "WORKERS": str(workers), "THREADS": str(THREADS)}
        # "warmstart at DIR": another checkout's func/, which `python -m` finds first in its cwd
        cwd = Path(name.removeprefix(f"{WARMSTART} at ")) if name != WARMSTART else bench.ROOT
        return bench.System(name, [sys.executable, "-m", "func"], env, cwd=cwd)
    bare = bench.systems()[BARE]
    cmd = [str(workers) if previous == "-w" else part for previous, part in zip(["", *bare.cmd], bare.cmd)]
    return bench.System(BARE, cmd, bare.env)


def start_until_ready(system: bench.System) -> dict[str, float]:
    """Start the server; seconds from exec to its first prediction and to ready, and the
    CPU seconds its processes had used by then (steadier than the wall clock on a busy
    machine)."""
    first = system.start()
    assert system.proc is not None
    if not system.name.startswith(WARMSTART):
        return {"first_prediction_s": first, "ready_s": first, "cpu_to_ready_s": cpu_seconds(system.proc.pid)}
    started = time.perf_counter() - first
    url = system.url.removesuffix("/predict") + "/health/readiness"
    deadline = time.perf_counter() + 120
    while requests.get(url, timeout=2).status_code != 200:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{url}: not ready within 120 s")
        time.sleep(0.002)
    requests.post(system.url, data=system.body, headers={"Content-Type": "application/json"}, timeout=2)
    ready = time.perf_counter() - started
    return {"first_prediction_s": first, "ready_s": ready, "cpu_to_ready_s": cpu_seconds(system.proc.pid)}


def cold_and_memory(names: list[str], starts: int, seconds: float, body_file: Path) -> dict[str, dict]:
    samples: dict[str, list[dict]] = {name: [] for name in names}
    for n in range(starts):
        for name in samples:
            system = make(name, 2)
            try:
                sample = start_until_ready(system)
                sample["rss_ready_mb"] = system.rss_mb()
                bench.wrk(system.url, 32, seconds, body_file)
                sample["rss_loaded_mb"] = system.rss_mb()
            finally:
                system.stop()
            samples[name].append(sample)
            print(
                f"start {n + 1} {name:26} first prediction {sample['first_prediction_s']:.3f} s, ready "
                f"{sample['ready_s']:.3f} s, CPU {sample['cpu_to_ready_s']:.2f} s; largest process "
                f"{sample['rss_ready_mb']['largest']:.1f} MB ready, "
                f"{sample['rss_loaded_mb']['largest']:.1f} MB after load",
                flush=True,
            )
    summary = {}
    for name, runs in samples.items():
        summary[name] = {
            "first_prediction_s": round(statistics.median(r["first_prediction_s"] for r in runs), 3),
            "ready_s": round(statistics.median(r["ready_s"] for r in runs), 3),
            "cpu_to_ready_s": round(statistics.median(r["cpu_to_ready_s"] for r in runs), 3),
            "largest_rss_ready_mb": round(statistics.median(r["rss_ready_mb"]["largest"] for r in runs), 1),
            "largest_rss_loaded_mb": round(statistics.median(r["rss_loaded_mb"]["largest"] for r in runs), 1),
            "total_rss_loaded_mb": round(statistics.median(r["rss_loaded_mb"]["total"] for r in runs), 1),
            "runs": runs,
        }
    return summary


def request_cpu(names: list[str], workers: list[int], seconds: float, rounds: int, body_file: Path) -> dict[str, dict]:
    systems = {(w, name): make(name, w) for w in workers for name in names}
    samples: dict[tuple[int, str], list[tuple[float, float]]] = {key: [] for key in systems}
    try:
        for system in systems.values():
            start_until_ready(system)
        for r in range(rounds):
            for (w, name), system in systems.items():
                assert system.proc is not None
                before = cpu_seconds(system.proc.pid)
                result = bench.wrk(system.url, 32, seconds, body_file)
                if result["non2xx"] or result["socket_errors"]:
                    raise RuntimeError(f"{name}: {result['non2xx']} non-2xx, {result['socket_errors']} socket errors")
                cpu = cpu_seconds(system.proc.pid) - before
                samples[(w, name)].append((result["rps"], result["requests"] / cpu))
                print(
                    f"round {r + 1} {w} worker(s) {name:26} {result['rps']:8,.0f} req/s "
                    f"{result['requests'] / cpu:8,.0f} req per CPU-s",
                    flush=True,
                )
    finally:
        for system in systems.values():
            system.stop()
    summary: dict[str, dict] = {}
    for w in workers:
        medians = {
            name: (
                statistics.median(r for r, _ in samples[(w, name)]),
                statistics.median(c for _, c in samples[(w, name)]),
            )
            for name in names
        }
        bare_rps, bare_per_cpu = medians[BARE]
        summary[str(w)] = {
            name: {
                "rps": round(rps),
                "requests_per_cpu_s": round(per_cpu),
                "ratio_rps": round(rps / bare_rps, 3),
                "ratio_requests_per_cpu_s": round(per_cpu / bare_per_cpu, 3),
            }
            for name, (rps, per_cpu) in medians.items()
        }
    return summary


def print_cold(cold: dict[str, dict], starts: int) -> None:
    bare = cold[BARE]
    print(f"\nmedians of {starts} starts (2 workers x {THREADS} threads)")
    for name, c in cold.items():
        print(
            f"  {name:26} first prediction {c['first_prediction_s']:.3f} s, ready {c['ready_s']:.3f} s, "
            f"CPU to ready {c['cpu_to_ready_s']:.2f} s; largest "
            f"process {c['largest_rss_ready_mb']:.1f} MB ready, {c['largest_rss_loaded_mb']:.1f} MB after load"
        )
    for name, c in cold.items():
        print(
            f"  cold start (ready) of {name}: {c['ready_s'] / bare['ready_s']:.2f}x bare, "
            f"CPU to ready {c['cpu_to_ready_s'] / bare['cpu_to_ready_s']:.2f}x"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-cpu", action="store_true", help="cold start and memory only")
    parser.add_argument("--skip-cold", action="store_true", help="request CPU only")
    parser.add_argument(
        "--compare", type=Path, nargs="*", default=[], help="also the warmstart of these checkouts (before a change)"
    )
    parser.add_argument("--out", type=Path, default=LOADTESTS / "results" / "startup.json")
    args = parser.parse_args()
    bench.ensure_prerequisites()
    for tree in [bench.ROOT, *args.compare]:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "func")], check=True)
    body_file = Path(tempfile.mkstemp(suffix=".json")[1])
    body_file.write_text(make(WARMSTART, 1).body)
    try:
        names = [WARMSTART, BARE, *(f"{WARMSTART} at {path.resolve()}" for path in args.compare)]
        cold = {} if args.skip_cold else cold_and_memory(names, args.starts, args.seconds, body_file)
        cpu = {} if args.skip_cpu else request_cpu(names, args.workers, args.seconds, args.rounds, body_file)
    finally:
        body_file.unlink()
    if cold:
        print_cold(cold, args.starts)
    for w, by in cpu.items():
        for name, m in by.items():
            print(
                f"  {w} worker(s), {name}: {m['ratio_requests_per_cpu_s']:.2f}x bare's requests per CPU-second "
                f"({m['requests_per_cpu_s']:,}), req/s {m['ratio_rps']:.2f}x"
            )
    results_file.write(
        args.out,
        {
            "settings": vars(args) | {"out": str(args.out), "compare": [str(p) for p in args.compare]},
            "cold": cold,
            "request_cpu": cpu,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
