"""Throughput after a worker is SIGKILLed under keep-alive load (issue #11, item 13).

    .venv/bin/python loadtests/worker_loss.py [--seconds 12] [--kill-at 2] [--env CONNECTION_MAX_AGE=0]

Runs wrk (32 kept-alive connections) twice against `python -m func` with 2 workers: once
undisturbed, once with one worker SIGKILLed `--kill-at` seconds in. gunicorn starts a
replacement at once, but wrk's connections that were on the dead worker reconnect to the
survivor; unless kept-alive connections are closed now and then (CONNECTION_MAX_AGE),
they stay there and the replacement idles. Prints req/s of both runs and, each second
of the second run, the connections each worker holds and the CPU it used. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def _connections(pid: int, port: int) -> int:
    """Established TCP connections to `port` held by process `pid`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if int(parts[1].split(":")[1], 16) == port and parts[3] == "01":
            inodes.add(parts[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


def run(env: dict[str, str], seconds: float, kill_at: float | None, body: Path) -> tuple[float, list[str]]:
    server = bench.System("warmstart", [sys.executable, "-m", "func"], {**bench.systems()["warmstart"].env, **env})
    server.start()
    samples: list[str] = []
    try:
        result: dict = {}
        load = threading.Thread(target=lambda: result.update(bench.wrk(server.url, 32, seconds, body)))
        load.start()
        started = time.monotonic()
        if kill_at is not None:
            time.sleep(kill_at)
            os.kill(bench._children(server.proc.pid)[0], 9)
        last: dict[int, float] = {}
        while load.is_alive():
            time.sleep(1)
            workers = bench._children(server.proc.pid)
            line = []
            for pid in workers:
                try:
                    cpu, conns = _cpu_s(pid), _connections(pid, server.port)
                except FileNotFoundError:
                    continue
                line.append(f"pid {pid}: {conns:2d} conns, {cpu - last.get(pid, cpu):4.2f} CPU s")
                last[pid] = cpu
            samples.append(f"{time.monotonic() - started:5.1f} s  " + " | ".join(line))
        load.join()
        return result["rps"], samples
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--kill-at", type=float, default=2.0)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server, repeatable")
    args = parser.parse_args()
    bench.ensure_prerequisites()
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as body:
        body.write(bench.System("warmstart", [], {}).body)
        body.flush()
        steady, _ = run(env, args.seconds, None, Path(body.name))
        hurt, samples = run(env, args.seconds, args.kill_at, Path(body.name))
    print("\n".join(samples))
    print(
        f"undisturbed: {steady:,.0f} req/s; worker SIGKILLed at {args.kill_at:g} s: {hurt:,.0f} req/s "
        f"({hurt / steady:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
