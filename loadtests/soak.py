#!/usr/bin/env python3
"""Soak: minutes of mixed HTTP and CloudEvents traffic at 80 % of the measured maximum.

    .venv/bin/python loadtests/soak.py [--minutes 10] [--fraction 0.8] [--quick]

Starts `python -m func` (2 workers × 4 threads, metrics, access log and drift on: the
defaults) on a loopback port, measures its maximum with wrk on the same mix, then holds
`--fraction` of it for `--minutes`, one wrk run per minute, paced by a Lua scheduler
(wrk has no rate option). The mix, per 10 requests: 5 one-row `/predict`, 2 ten-row
`/predict`, 2 binary-mode and 1 structured-mode `warmstart.predict.v1` events, rows drawn
from the training data so drift windows fill with real rows. RSS of the server's
processes is sampled every 2 s.

Pass: zero errors (non-2xx, socket errors, timeouts) and RSS growth under 5 % between
the end of minute 2 and the end of the run. Writes loadtests/results/soak.json and
soak.png; exits 1 when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
LOADTESTS = ROOT / "loadtests"
RESULTS = LOADTESTS / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(LOADTESTS))

import results_file  # noqa: E402

from tests.support.server import free_port  # noqa: E402

CONNECTIONS = 16
THREADS = 2
WARMUP_MINUTES = 2
RSS_GROWTH_LIMIT = 0.05
# wrk's own per-request timeout; anything slower counts as an error
TIMEOUT_S = 5

# Paces each wrk thread to `rate` requests/s: every request takes the next slot of a
# per-thread schedule (clock_gettime through LuaJIT's ffi; wrk's delay() is in ms), and
# a schedule that fell over 100 ms behind restarts from now instead of bursting.
LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } warm_timespec;
int clock_gettime(int clk, warm_timespec *tp);
]]
local ts = ffi.new("warm_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local requests_ = dofile("__REQUESTS__")
local rate = __RATE__
local interval = rate > 0 and 1000 / rate or 0
local next_slot = nil
local i = 0
local counter = 0

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  i = seed % #requests_
end

function delay()
  if interval == 0 then return 0 end
  local t = now_ms()
  if next_slot == nil or next_slot < t - 100 then next_slot = t end
  next_slot = next_slot + interval
  local d = next_slot - t
  if d <= 0 then return 0 end
  return math.floor(d)
end

function request()
  i = i % #requests_ + 1
  counter = counter + 1
  local r = requests_[i]
  local headers = {}
  for k, v in pairs(r.headers) do headers[k] = v end
  if headers["ce-id"] then headers["ce-id"] = "soak-" .. seed .. "-" .. counter end
  return wrk.format("POST", r.path, headers, r.body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid Lua string literal for ASCII text


def request_mix(rows: list[list[float]]) -> list[dict]:
    """The repeating mix of 10 requests, with rows taken in turn from `rows`."""
    json_headers = {"Content-Type": "application/json"}
    mix = []
    k = 0

    def take(n: int) -> list[list[float]]:
        nonlocal k
        taken = [rows[(k + j) % len(rows)] for j in range(n)]
        k += n
        return taken

    for _ in range(len(rows) // 20):
        for _ in range(5):
            mix.append({"path": "/predict", "headers": json_headers, "body": json.dumps({"features": take(1)[0]})})
        for _ in range(2):
            mix.append({"path": "/predict", "headers": json_headers, "body": json.dumps({"instances": take(10)})})
        for _ in range(2):
            ce = {
                **json_headers,
                "ce-specversion": "1.0",
                "ce-type": "warmstart.predict.v1",
                "ce-source": "/soak",
                "ce-id": "x",
            }
            mix.append({"path": "/", "headers": ce, "body": json.dumps({"features": take(1)[0]})})
        structured = {
            "specversion": "1.0",
            "type": "warmstart.predict.v1",
            "source": "/soak",
            "id": "soak",
            "datacontenttype": "application/json",
            "data": {"instances": take(1)},
        }
        mix.append(
            {"path": "/", "headers": {"Content-Type": "application/cloudevents+json"}, "body": json.dumps(structured)}
        )
    return mix


def write_lua(work: Path, mix: list[dict], rate_per_thread: float) -> Path:
    entries = []
    for r in mix:
        headers = ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in r["headers"].items())
        entries.append(f"{{path = {lua_string(r['path'])}, headers = {{{headers}}}, body = {lua_string(r['body'])}}}")
    requests_lua = work / "requests.lua"
    requests_lua.write_text("return {\n" + ",\n".join(entries) + "\n}\n")
    script = work / f"soak-{rate_per_thread:.0f}.lua"
    script.write_text(LUA.replace("__REQUESTS__", str(requests_lua)).replace("__RATE__", f"{rate_per_thread:.3f}"))
    return script


def run_wrk(url: str, script: Path, seconds: float) -> dict:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(THREADS),
            "-c",
            str(CONNECTIONS),
            "-d",
            f"{seconds:.0f}s",
            "--timeout",
            f"{TIMEOUT_S}s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


class Server:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WORKERS": "2",
            "THREADS": "4",
            "MODEL_PATH": str(ROOT / "models" / "model.onnx"),
        }
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "func"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health/readiness", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server not ready in 60 s")

    def rss_mb(self) -> dict[str, float]:
        pids = [self.proc.pid, *_children(self.proc.pid)]
        sizes = [_rss_mb(pid) for pid in pids]
        return {"total": round(sum(sizes), 1), "workers": [round(s, 1) for s in sizes[1:]]}

    def stop(self) -> None:
        os.killpg(self.proc.pid, 9)
        self.proc.wait(10)
        self._log.close()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def machine_load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def plot(samples: list[dict], minutes: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t = [s["t_s"] / 60 for s in samples]
    ax1.plot(t, [s["total"] for s in samples], label="server RSS, all processes")
    ax1.axvline(WARMUP_MINUTES, color="grey", linestyle=":", label=f"end of minute {WARMUP_MINUTES}")
    ax1.set_ylabel("RSS MB")
    ax1.legend(loc="lower right")
    ends = [m["minute"] for m in minutes]
    ax2.step(ends, [m["rps"] for m in minutes], where="pre", label="req/s")
    ax2.axhline(target, color="grey", linestyle=":", label="target")
    ax2b = ax2.twinx()
    ax2b.step(ends, [m["p99_ms"] for m in minutes], where="pre", color="tab:red", label="p99 ms")
    ax2b.set_ylabel("p99 ms")
    ax2.set_ylabel("req/s")
    ax2.set_xlabel("minute")
    ax2.set_ylim(bottom=0)
    ax2b.set_ylim(bottom=0)
    ax2.legend(loc="lower left")
    ax2b.legend(loc="lower right")
    fig.suptitle("warmstart soak: mixed HTTP and CloudEvents at 80 % of the measured maximum")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.8)
    parser.add_argument("--max-seconds", type=float, default=15, help="length of the maximum measurement")
    parser.add_argument("--quick", action="store_true", help="2 minutes, a 5 s maximum (a sanity check)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.max_seconds = 3, 5
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    from sklearn.datasets import load_breast_cancer

    rows = load_breast_cancer().data.tolist()
    mix = request_mix(rows)
    work = Path(tempfile.mkdtemp(prefix="warmstart-soak-"))
    server = Server(work / "server.log")
    samples: list[dict] = []
    stop = threading.Event()
    started = time.monotonic()
    try:
        unpaced = write_lua(work, mix, 0)
        run_wrk(server.url, unpaced, 3)  # warm both workers
        maximum = run_wrk(server.url, unpaced, args.max_seconds)
        target = maximum["rps"] * args.fraction
        print(
            f"maximum {maximum['rps']:.0f} req/s (errors {maximum['errors']}); holding {target:.0f} req/s "
            f"for {args.minutes} min; load average {machine_load()}",
            flush=True,
        )
        paced = write_lua(work, mix, target / THREADS)

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                samples.append({"t_s": round(time.monotonic() - t0, 1), **server.rss_mb()})
                stop.wait(2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        minutes = []
        for minute in range(1, args.minutes + 1):
            result = run_wrk(server.url, paced, 60)
            result.update(minute=minute, rss_mb=server.rss_mb()["total"], load_average=machine_load())
            minutes.append(result)
            print(
                f"minute {minute}: {result['rps']:.0f} req/s, errors {result['errors']}, "
                f"p99 {result['p99_ms']:.1f} ms, RSS {result['rss_mb']} MB, load {result['load_average']}",
                flush=True,
            )
        stop.set()
        sampler.join()
        drift = requests.get(server.url + "/drift", timeout=5).json()
    finally:
        stop.set()
        server.stop()
    base = minutes[WARMUP_MINUTES - 1]["rss_mb"] if len(minutes) > WARMUP_MINUTES else minutes[0]["rss_mb"]
    end = minutes[-1]["rss_mb"]
    growth = (end - base) / base
    errors = sum(m["errors"] for m in minutes)
    passed = errors == 0 and growth < RSS_GROWTH_LIMIT
    summary = {
        "maximum_rps": round(maximum["rps"], 1),
        "target_rps": round(target, 1),
        "achieved_rps_median": round(statistics.median(m["rps"] for m in minutes), 1),
        "requests": sum(m["requests"] for m in minutes),
        "errors": errors,
        "p99_ms_worst_minute": round(max(m["p99_ms"] for m in minutes), 2),
        "rss_mb_end_of_minute_2": base,
        "rss_mb_end": end,
        "rss_growth": round(growth, 4),
        "drift_rows_seen": drift.get("rows_seen"),
        "drift_windows_by_status": drift.get("windows"),
        "passed": passed,
        "wall_s": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    results_file.write(
        args.out / "soak.json",
        {
            "summary": summary,
            "minutes": minutes,
            "rss_samples": samples,
            "mix": "per 10 requests: 5 one-row /predict, 2 ten-row /predict, "
            "2 binary and 1 structured warmstart.predict.v1",
        },
    )
    plot(samples, minutes, target, args.out / "soak.png")
    print(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
