"""How long normal requests take while a few hostile clients hold connections (#11 item 12,
#20 items 4 and 10).

    .venv/bin/python loadtests/slow_clients.py [--clients 8] [--requests 20]

Against `python -m func` with its default 2 workers x 4 threads, for each attack in
turn: open the attacking connections, then time single-row predictions on fresh
connections (2 s client timeout each). Attacks: half a request header; a silent
connection (200 of them); a body trickled at 1 byte/s; a chunked body that never ends;
64 KiB + 1 of a 100 KiB body, then nothing; `Expect: 100-continue` and no body (16 of
them); 2,200 idle connections, past what the two workers hold (2 x MAX_CONNECTIONS).
Prints the median and worst latency and how many requests timed out. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable

import bench
import requests

HEAD = "POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"


def half_header(s: socket.socket, stop: threading.Event) -> None:
    s.sendall(HEAD.encode())


def silent(s: socket.socket, stop: threading.Event) -> None:
    pass


def trickle(s: socket.socket, stop: threading.Event) -> None:
    s.sendall(f"{HEAD}Content-Length: 1000\r\n\r\n".encode())
    while not stop.wait(1):
        s.sendall(b" ")


def endless_chunks(s: socket.socket, stop: threading.Event) -> None:
    s.sendall(f"{HEAD}Transfer-Encoding: chunked\r\n\r\n1\r\n[\r\n".encode())
    while not stop.wait(1):
        s.sendall(b"1\r\n \r\n")


def stalled_body(s: socket.socket, stop: threading.Event) -> None:
    s.sendall(f"{HEAD}Content-Length: 102400\r\n\r\n".encode() + b" " * (64 * 1024 + 1))


def expect_no_body(s: socket.socket, stop: threading.Event) -> None:
    s.sendall(f"{HEAD}Expect: 100-continue\r\nContent-Length: 100\r\n\r\n".encode())


ATTACKS: dict[str, tuple[Callable[[socket.socket, threading.Event], None], int]] = {
    "half a header": (half_header, 1),
    "silent connection": (silent, 25),
    "1 byte/s upload": (trickle, 1),
    "endless chunked body": (endless_chunks, 1),
    "stalled 100 KiB body": (stalled_body, 1),
    "Expect, no body": (expect_no_body, 2),
    "idle flood": (silent, 275),
}


def attack(url: str, port: int, how: Callable, connections: int, requests_: int) -> list[float | None]:
    stop = threading.Event()
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    senders = [threading.Thread(target=how, args=(s, stop), daemon=True) for s in sockets]
    for sender in senders:
        sender.start()
    time.sleep(0.5)
    body = bench.System("warmstart", [], {}).body
    latencies: list[float | None] = []
    try:
        for _ in range(requests_):
            started = time.perf_counter()
            try:
                ok = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=2).ok
                latencies.append(time.perf_counter() - started if ok else None)
            except requests.RequestException:
                latencies.append(None)
    finally:
        stop.set()
        for s in sockets:
            s.close()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="attacking connections (x25 for silent ones)")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    results = {}
    for name, (how, factor) in ATTACKS.items():
        server = bench.systems()["warmstart"]  # a fresh server per attack
        server.start()
        try:
            latencies = attack(server.url, server.port, how, args.clients * factor, args.requests)
        finally:
            server.stop()
        done = [x * 1000 for x in latencies if x is not None]
        results[name] = {
            "connections": args.clients * factor,
            "median_ms": round(statistics.median(done), 1) if done else None,
            "worst_ms": round(max(done), 1) if done else None,
            "timed_out": len(latencies) - len(done),
        }
        print(f"{args.clients * factor:4d} x {name:22s} {json.dumps(results[name])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
